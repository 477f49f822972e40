"""`speechq export`: a job's results as files in a folder, streamed from the API to disk."""

from __future__ import annotations

import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Annotated, Optional

import httpx
import typer

from api.cli.app import ApiOpt, api_url, app, auth_headers, console
from api.cli.jobs import EXIT_CODES, ExitCode, fail, unauthorized

FORMATS = ("jsonl", "csv", "srt", "vtt", "zip")


def _filename(r: httpx.Response, fallback: str) -> str:
    found = re.search(r'filename="([^"]+)"', r.headers.get("content-disposition", ""))
    return Path(found.group(1)).name if found else fallback


def download(url: str, job_id: str, params: dict, folder: Path, fallback: str) -> Path:
    """GET the export into `folder` chunk by chunk (never whole in memory); the API names the file."""
    try:
        with httpx.stream("GET", f"{url}/v1/jobs/{job_id}/export", params=params, headers=auth_headers(),
                          timeout=httpx.Timeout(60, read=600)) as r:
            if r.status_code != 200:
                r.read()
                unauthorized(r)
                if r.status_code == 404:
                    raise fail(ExitCode.NOT_FOUND, r.json().get("detail", f"no job {job_id}"))
                raise fail(ExitCode.API_ERROR, f"the API answered {r.status_code}: {r.text[:300]}")
            target = folder / _filename(r, fallback)
            partial = target.with_name(target.name + ".part")
            with open(partial, "wb") as out:
                for chunk in r.iter_bytes():
                    out.write(chunk)
    except httpx.HTTPError as exc:
        raise fail(ExitCode.API_ERROR, f"cannot reach the API at {url}: {exc}") from None
    partial.replace(target)  # a file under its final name is complete
    return target


def unpack(archive: Path, ext: str, folder: Path) -> list[Path]:
    """The members of the job's zip in one format, written under `folder` as the calls are named."""
    written = []
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(f".{ext}"):
                continue
            target = (folder / info.filename).resolve()
            if folder.resolve() not in target.parents:  # the API makes safe names; a zip is checked anyway
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            written.append(target)
    return written


@app.command(epilog=EXIT_CODES)
def export(job_id: str,
           fmt: Annotated[str, typer.Option("--format", "-f", help="jsonl, csv (one row per segment), srt, vtt "
                                            "(subtitles per call), or zip (every call in every format)")] = "jsonl",
           out: Annotated[Path, typer.Option("--output", "-o", file_okay=False, help="Folder to write into")] = Path("."),
           file_id: Annotated[Optional[str], typer.Option("--file", help="Only this call (a file id of the job)")
                              ] = None,
           api: ApiOpt = None) -> None:
    """Write a job's results into a folder. jsonl and csv: one file for the job (or the call); srt and vtt: one
    subtitle file per call; zip: the archive as the API makes it."""
    if fmt not in FORMATS:
        raise typer.BadParameter(f"one of {', '.join(FORMATS)}", param_hint="--format")
    url = api_url(api)
    out.mkdir(parents=True, exist_ok=True)
    if fmt in ("srt", "vtt") and file_id is None:
        # Subtitles are per call: take the job's zip and keep that format's members.
        with tempfile.TemporaryDirectory(dir=out, prefix=".speechq-export-") as tmp:
            archive = download(url, job_id, {"format": "zip"}, Path(tmp), f"speechq-{job_id}.zip")
            written = unpack(archive, fmt, out)
        console.print(f"{len(written)} {fmt} file(s) written under {out}")
        return
    params = {"format": fmt, **({"file_id": file_id} if file_id else {})}
    target = download(url, job_id, params, out, f"speechq-{job_id}.{fmt}")
    console.print(f"written {target} ({target.stat().st_size} bytes)")
