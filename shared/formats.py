"""What a submitted file is, by its name and first bytes: an archive to expand, a sidecar (metadata
that travels with call recordings) to skip, or a recording to decode. The API and the ingest
workers classify alike."""

from __future__ import annotations

from pathlib import PurePosixPath

# Files that travel with recordings in call archives (metadata, notes, checksums, documents): skipped, not failed.
SIDECAR_SUFFIXES = frozenset(
    ".txt .csv .tsv .json .jsonl .xml .yaml .yml .ini .cfg .conf .log .md .rst .nfo .html .htm .pdf .rtf .doc .docx "
    ".xls .xlsx .odt .ods .md5 .sha1 .sha256 .sfv .sig .asc .jpg .jpeg .png .gif .bmp .tif .tiff".split())
SYSTEM_FILES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})


def is_archive(name: str, head: bytes) -> bool:
    lower = name.lower()
    if lower.endswith((".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        return True
    return head.startswith(b"PK\x03\x04") or head[257:262] == b"ustar"


def sidecar(name: str) -> str | None:
    """Why a file of this name (as submitted, or as an archive member) is not a recording; None if it may be one."""
    path = PurePosixPath(name.replace("\\", "/"))
    if "__MACOSX" in path.parts or path.name.startswith("._"):
        return "macOS metadata (resource fork), not audio"
    if path.name.lower() in SYSTEM_FILES:
        return "file-system metadata, not audio"
    if path.suffix.lower() in SIDECAR_SUFFIXES:
        return f"sidecar file ({path.suffix.lower()}), not audio"
    return None
