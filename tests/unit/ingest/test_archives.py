import io
import tarfile
import zipfile

import pytest

from shared.formats import is_archive
from workers.ingest.archives import MemberRejected, members, safe_name


def test_safe_name():
    assert safe_name("a/b/c.wav") == "a/b/c.wav"
    for bad in ("../x.wav", "/etc/passwd", "a/../../x", "..\\win.wav"):
        with pytest.raises(MemberRejected):
            safe_name(bad)


def test_tar_links_and_devices_are_rejected(tmp_path):
    path = tmp_path / "t.tar"
    with tarfile.open(path, "w") as tf:
        data = b"RIFF...."
        info = tarfile.TarInfo("ok.wav")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link.wav")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
        dev = tarfile.TarInfo("dev.wav")
        dev.type = tarfile.CHRTYPE
        tf.addfile(dev)
    got = {name: opener for name, opener in members(path)}
    assert callable(got["ok.wav"])
    assert isinstance(got["link.wav"], MemberRejected) and isinstance(got["dev.wav"], MemberRejected)


def test_zip_bomb_ratio_is_rejected(tmp_path):
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.wav", b"\0" * 5_000_000)
    ((name, opener),) = list(members(path))
    assert isinstance(opener, MemberRejected) and "compression ratio" in str(opener)


def test_is_archive_by_name_or_magic():
    assert is_archive("x.tar.gz", b"")
    assert is_archive("upload", b"PK\x03\x04rest")
    assert not is_archive("call.wav", b"RIFF")


def test_non_utf8_member_names_become_valid_text(tmp_path):
    path = tmp_path / "latin1.tar"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT, encoding="latin-1") as tf:
        info = tarfile.TarInfo("caf\xe9/appel.wav")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    ((name, _),) = list(members(path))
    clean = safe_name(name)
    assert clean == "caf\ufffd/appel.wav"
    clean.encode("utf-8")  # storable in PostgreSQL


def test_encrypted_zip_member_is_rejected(tmp_path):
    path = tmp_path / "secret.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("call.wav", b"RIFF" + b"\0" * 100)
    raw = bytearray(path.read_bytes())
    # Set the 'encrypted' flag (bit 0) in the local header and in the central directory entry.
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = raw.find(signature)
        raw[at + offset] |= 0x01
    path.write_bytes(bytes(raw))
    ((name, opener),) = list(members(path))
    assert isinstance(opener, MemberRejected) and "encrypted" in str(opener)


@pytest.fixture
def database(tmp_path, monkeypatch):
    from shared.config import get_settings
    from shared.db import migrate

    monkeypatch.setenv("SPEECHQ_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    get_settings.cache_clear()
    migrate()
    yield get_settings()
    get_settings.cache_clear()


def test_sidecars_are_skipped_and_failures_end_the_task_failed(database, tmp_path):
    from unittest import mock

    from shared.db import session_scope
    from shared.schema import Archive, File, Job
    from shared import progress, tasks
    from workers.ingest import archives

    path = tmp_path / "upload.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("day1/call.wav", b"RIFF" + b"\0" * 100)
        zf.writestr("day1/notes.txt", "agent Smith, customer 4711")
        zf.writestr("day1/index.CSV", "file,agent\ncall.wav,Smith\n")
        zf.writestr("__MACOSX/day1/._call.wav", b"\0\5\26\7")
        zf.writestr("../escape.wav", b"RIFF")
    with session_scope() as db:
        job = Job()
        db.add(job)
        db.flush()
        archive = Archive(job_id=job.id, name="calls.zip", path=str(path), size_bytes=path.stat().st_size)
        db.add(archive)
        db.flush()
        job_id, archive_id = job.id, archive.id
    with mock.patch.object(tasks, "send_files") as queued, pytest.raises(progress.FilesFailed) as failed:
        archives.expand_archive(archive_id)
    assert str(failed.value) == ("1 of 5 file(s) failed: calls.zip/../escape.wav: "
                                 "unsafe member path '../escape.wav' (absolute or '..')")
    (refs,), _ = queued.call_args
    assert [(r.job_id, r.name) for r in refs] == [(job_id, "calls.zip/day1/call.wav")]
    with session_scope() as db:
        files = {f.name: (f.state.value, f.error) for f in db.query(File).filter(File.job_id == job_id)}
        job = db.get(Job, job_id)
        assert (job.files_total, job.files_failed, job.files_skipped) == (5, 1, 3)
    assert files["calls.zip/day1/notes.txt"] == ("skipped", "sidecar file (.txt), not audio")
    assert files["calls.zip/day1/index.CSV"] == ("skipped", "sidecar file (.csv), not audio")
    assert files["calls.zip/__MACOSX/day1/._call.wav"] == ("skipped", "macOS metadata (resource fork), not audio")
    assert files["calls.zip/day1/call.wav"] == ("queued", None)


def test_unreadable_archive_names_the_upload_not_the_spool(database):
    from unittest import mock

    from shared.db import session_scope
    from shared.schema import Archive, Job
    from shared import progress, tasks
    from workers.ingest import archives

    spool = database.spool
    missing = spool / "uploads" / "job" / "0123-calls.zip"  # gone from the spool
    with session_scope() as db:
        job = Job()
        db.add(job)
        db.flush()
        archive = Archive(job_id=job.id, name="calls.zip", path=str(missing), size_bytes=10)
        db.add(archive)
        db.flush()
        archive_id = archive.id
    with mock.patch.object(tasks, "send_files"), pytest.raises(progress.FilesFailed) as failed:
        archives.expand_archive(archive_id)
    with session_scope() as db:
        error = db.get(Archive, archive_id).error
    assert error.startswith("archive unreadable") and "calls.zip" in error
    assert str(spool) not in error and str(spool) not in str(failed.value)


def _archive_row(tmp_path, state: str, attempts: int, age_s: float) -> tuple[str, str]:
    from datetime import timedelta

    from shared.db import session_scope
    from shared.schema import Archive, ArchiveState, Job, JobState, utcnow

    path = tmp_path / "calls.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.wav", b"RIFF" + b"\0" * 100)
    with session_scope() as db:
        job = Job(state=JobState.running, files_total=0)
        db.add(job)
        db.flush()
        archive = Archive(job_id=job.id, name="calls.zip", path=str(path), size_bytes=path.stat().st_size,
                          state=ArchiveState(state), attempts=attempts)
        db.add(archive)
        db.flush()
        archive.updated_at = utcnow() - timedelta(seconds=age_s)
        return job.id, archive.id


def test_an_archive_being_expanded_is_not_expanded_twice(database, tmp_path):
    """Claimed like files and batches: within the deadline, another worker's expansion is left alone."""
    from unittest import mock

    from shared import tasks
    from shared.db import session_scope
    from shared.schema import Archive, ArchiveState
    from workers.ingest import archives

    _, archive_id = _archive_row(tmp_path, "expanding", attempts=1, age_s=1)
    with mock.patch.object(tasks, "send_files") as queued:
        archives.expand_archive(archive_id)
    queued.assert_not_called()
    with session_scope() as db:
        archive = db.get(Archive, archive_id)
        assert (archive.state, archive.attempts) == (ArchiveState.expanding, 1)


def test_an_archive_that_kills_its_workers_is_given_up(database, tmp_path):
    """Archives have the attempt cap of files and batches: one stuck past the deadline on its last
    attempt fails with the reason, and its job ends, instead of staying 'expanding' forever."""
    from unittest import mock

    from shared import progress, tasks
    from shared.db import session_scope
    from shared.schema import Archive, ArchiveState, Job, JobState

    from workers.ingest import archives

    cap = database.max_attempts
    job_id, archive_id = _archive_row(tmp_path, "expanding", attempts=cap, age_s=database.task_deadline_seconds + 5)
    with mock.patch.object(tasks, "send_files") as queued, pytest.raises(progress.FilesFailed, match="gave up"):
        archives.expand_archive(archive_id)
    queued.assert_not_called()
    with session_scope() as db:
        archive = db.get(Archive, archive_id)
        assert archive.state == ArchiveState.failed
        assert archive.error == f"gave up after {cap} attempts (the worker died on this archive)"
        assert db.get(Job, job_id).state in (JobState.failed, JobState.done)
