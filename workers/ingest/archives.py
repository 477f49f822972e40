"""Expand an uploaded zip or tar into files, member by member, with limits against hostile input.

Each member is streamed to the spool under a generated name (so member paths never touch the
file system); the member's path is kept as the file's name. File ids derive from the archive and
the member's position, so a redelivered expansion adds nothing twice.
"""

from __future__ import annotations

import hashlib
import logging
import tarfile
import zipfile
from pathlib import Path, PurePosixPath


from shared import claims, formats, progress, tasks
from shared.config import get_settings
from shared.db import session_scope
from shared.schema import Archive, ArchiveState, File, FileState, Job, JobState, utcnow
from shared.storage import Spool
from shared.tasks import app

log = logging.getLogger(__name__)
CHUNK = 1 << 20


# Longest name a file row holds (archive/member as submitted); longer member names fail that member alone.
NAME_LIMIT = File.__table__.c.name.type.length


class MemberRejected(Exception):
    pass


class ArchiveRejected(Exception):
    pass


def file_id(archive_id: str, index: int) -> str:
    return hashlib.sha1(f"{archive_id}:{index}".encode()).hexdigest()[:32]


def printable(name: str | bytes) -> str:
    """A member name as valid UTF-8: undecodable bytes (tar keeps them as surrogates) become U+FFFD."""
    raw = name if isinstance(name, bytes) else name.encode("utf-8", "surrogateescape")
    return raw.decode("utf-8", "replace").replace("\x00", "")


def safe_name(name: str | bytes) -> str:
    text = printable(name)
    path = PurePosixPath(text.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts:
        raise MemberRejected(f"unsafe member path {text!r} (absolute or '..')")
    return str(path)


def _copy(src, dst: Path, limit: int) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    with open(dst, "wb") as out:
        while chunk := src.read(CHUNK):
            n += len(chunk)
            if n > limit:
                raise MemberRejected(f"member larger than the limit of {limit} bytes")
            h.update(chunk)
            out.write(chunk)
    return n, h.hexdigest()


def census(path: Path, max_members: int, budget: int, ratio: float) -> int:
    """Count an archive's members and add up their sizes from its headers before any member is written, and
    refuse it whole (ArchiveRejected) over the member limit, the byte budget or, for a compressed tar, the
    compression ratio. A tar is read header by header and its members' sizes are added before their data is
    passed over, so a bomb is never decompressed past the limits. Returns the number of members."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            entries = [i for i in zf.infolist() if not i.is_dir()]
        if len(entries) > max_members:
            raise ArchiveRejected(f"{len(entries)} members, over the limit of {max_members} "
                                  "(SPEECHQ_MAX_ARCHIVE_MEMBERS); nothing was extracted")
        total = sum(i.file_size for i in entries)
        if total > budget:
            raise ArchiveRejected(_over_budget(total, budget))
        return len(entries)
    size = path.stat().st_size
    limit = min(budget, int(ratio * max(size, 1)))
    count, total = 0, 0
    try:
        with tarfile.open(path, mode="r|*") as tf:
            for info in tf:
                if info.isdir():
                    continue
                count += 1
                if count > max_members:
                    raise ArchiveRejected(f"more than {max_members} members (SPEECHQ_MAX_ARCHIVE_MEMBERS); "
                                          "nothing was extracted")
                total += info.size if info.isfile() else 0
                if total > budget:
                    raise ArchiveRejected(_over_budget(total, budget))
                if total > limit:
                    raise ArchiveRejected(
                        f"members expand to more than {ratio:.0f} times the archive's {size} bytes "
                        f"(SPEECHQ_MAX_ARCHIVE_RATIO={ratio:g}); nothing was extracted")
    except tarfile.TarError as exc:
        raise ArchiveRejected(f"not a readable zip or tar archive: {exc}") from None
    return count


def _over_budget(total: int, budget: int) -> str:
    return (f"members add up to at least {total} bytes, over the budget of {budget} bytes left to this upload "
            "(SPEECHQ_MAX_ARCHIVE_BYTES); nothing was extracted")


def members(path: Path):
    """Yield (name, opener or rejection) for each regular entry of a zip or tar."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                if info.flag_bits & 0x1:
                    yield info.filename, MemberRejected("encrypted zip member")
                elif info.compress_size and info.file_size / info.compress_size > get_settings().max_archive_ratio:
                    yield info.filename, MemberRejected(
                        f"compression ratio {info.file_size / info.compress_size:.0f}:1 exceeds the limit")
                else:
                    yield info.filename, (lambda i=info: zf.open(i))
        return
    try:
        tf = tarfile.open(path, mode="r|*")
    except tarfile.TarError as exc:
        raise ArchiveRejected(f"not a readable zip or tar archive: {exc}") from None
    with tf:
        try:
            for info in tf:
                if info.isdir():
                    continue
                if not info.isfile():
                    yield info.name, MemberRejected("not a regular file (link or device) in tar")
                else:
                    yield info.name, (lambda i=info: tf.extractfile(i))
        except tarfile.TarError as exc:
            raise ArchiveRejected(f"archive is corrupt: {exc}") from None


@app.task(name=tasks.EXPAND_ARCHIVE, throws=(progress.FilesFailed,))
def expand_archive(archive_id: str) -> None:
    """Members become files (queued, failed or skipped as sidecars). Ends FAILURE (progress.FilesFailed) if the
    archive or any member failed, after the good members are queued."""
    settings = get_settings()
    with session_scope() as db:
        if not claims.claim(db, Archive, archive_id, ArchiveState.queued, ArchiveState.expanding):
            return  # done, or being expanded by another worker within the deadline
        archive = db.get(Archive, archive_id)
        job = db.get(Job, archive.job_id)
        if job.state == JobState.cancelled:
            return
        given_up = claims.gave_up(archive, "the worker died on this archive")
        if given_up:
            progress.lock_jobs(db, [archive.job_id])
            archive.state, archive.error = ArchiveState.failed, given_up
            log.warning("archive %s: %s", archive.name, given_up)
            progress.settle(db, [archive.job_id])
        if job.state == JobState.queued:
            job.state, job.started_at = JobState.running, utcnow()
        job_files = job.files_total or 0
        db.expunge(archive)
    if given_up:
        raise progress.FilesFailed.of([(archive.name, given_up)], 1)
    spool = Spool(settings.spool)
    budget = archive.budget_bytes if archive.budget_bytes is not None else settings.max_archive_bytes
    total, count, error, new, nested = 0, 0, None, [], []
    try:
        expected = census(Path(archive.path), settings.max_archive_members, budget, settings.max_archive_ratio)
        if job_files + expected > settings.max_job_files:
            raise ArchiveRejected(f"its {expected} members would bring the job to {job_files + expected} files, "
                                  f"over the limit of {settings.max_job_files} (SPEECHQ_MAX_JOB_FILES); "
                                  "nothing was extracted")
        for index, (name, opener) in enumerate(members(Path(archive.path))):
            count += 1
            if count > settings.max_archive_members:
                raise ArchiveRejected(f"more than {settings.max_archive_members} members")
            fid = file_id(archive_id, index)
            full = f"{archive.name}/{printable(name)}"
            row = {"id": fid, "job_id": archive.job_id, "archive_id": archive_id,
                   "name": full if len(full) <= NAME_LIMIT else full[:NAME_LIMIT - 1] + "\u2026", "path": ""}
            try:
                if len(full) > NAME_LIMIT:
                    raise MemberRejected(f"member name of {len(full)} characters (with the archive's name) is "
                                         f"longer than the limit of {NAME_LIMIT}; shown cut short")
                member = safe_name(name)
                row["name"] = f"{archive.name}/{member}"
                reason = formats.sidecar(member)
                if reason:  # notes.txt, calls.csv, __MACOSX/...: not a recording, not a failure
                    row.update(state=FileState.skipped, error=reason)
                    new.append(row)
                    continue
                if isinstance(opener, Exception):
                    raise opener
                dst = spool.uploads(archive.job_id) / fid
                with opener() as src:
                    size, digest = _copy(src, dst, budget - total)
                total += size
                with open(dst, "rb") as head:
                    inner = formats.is_archive(row["name"], head.read(512))
                if inner and archive.depth + 1 > settings.max_archive_depth:
                    raise MemberRejected(f"archive nested deeper than {settings.max_archive_depth} levels")
                if inner:
                    nested.append({"id": fid, "job_id": archive.job_id, "name": row["name"], "path": str(dst),
                                   "size_bytes": size, "depth": archive.depth + 1, "budget_bytes": budget - total})
                    continue
                row.update(path=str(dst), size_bytes=size, sha256=digest, state=FileState.queued)
            except MemberRejected as exc:
                row.update(state=FileState.failed, error=str(exc))
            except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as exc:
                row.update(state=FileState.failed, error=spool.redact(f"member unreadable: {exc}",
                                                                      {archive.path: archive.name}))
            new.append(row)
    except ArchiveRejected as exc:
        error = str(exc)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        error = spool.redact(f"archive unreadable: {exc}", {archive.path: archive.name})
    with session_scope() as db:
        progress.lock_jobs(db, [archive.job_id])
        existing = {f.id for f in db.query(File.id).filter(File.archive_id == archive_id)}
        fresh = [r for r in new if r["id"] not in existing]
        db.add_all(File(**r) for r in fresh)
        known = {a.id for a in db.query(Archive.id).filter(Archive.id.in_([n["id"] for n in nested]))}
        inner = [n for n in nested if n["id"] not in known]
        db.add_all(Archive(**n) for n in inner)
        a = db.get(Archive, archive_id)
        a.members, a.state, a.error = count, ArchiveState.failed if error else ArchiveState.done, error
        progress.settle(db, [archive.job_id])
    Path(archive.path).unlink(missing_ok=True)
    if error:
        log.warning("archive %s: %s", archive.name, error)
    # The members stand in the job after the files it held before this archive: their priority follows.
    for n in inner:
        tasks.send_archive(n["id"], n["job_id"], n["name"], position=job_files)
    queued = [tasks.FileRef(r["id"], r["job_id"], r["name"], r.get("size_bytes") or 0) for r in fresh if r.get("state") == FileState.queued]
    tasks.send_new_files(queued, start=job_files)
    skipped = sum(1 for r in fresh if r.get("state") == FileState.skipped)
    log.info("expanded %s: %d members, %d queued, %d skipped", archive.name, len(new), len(queued), skipped)
    failures = [(archive.name, error)] if error else []
    failures += [(r["name"], r["error"]) for r in fresh if r.get("state") == FileState.failed]
    if failures:
        raise progress.FilesFailed.of(failures, max(count, 1))
