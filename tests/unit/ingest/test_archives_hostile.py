"""Archives built to exhaust the spool or stall a job (issues 13 and 14): tar bombs in every compression, member
floods, names longer than the database holds. Each is refused before anything is extracted, or fails the one
member, and the archive always ends."""

from __future__ import annotations

import gzip
import io
import tarfile
import zipfile
from unittest import mock

import pytest

from workers.ingest.archives import ArchiveRejected, census

MiB = 1 << 20


def _tar(path, members: dict[str, bytes], mode: str = "w"):
    with tarfile.open(path, mode, format=tarfile.GNU_FORMAT) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("mode,suffix", [("w:gz", "tar.gz"), ("w:bz2", "tar.bz2"), ("w:xz", "tar.xz")])
def test_tar_bomb_is_refused_by_its_ratio_in_every_compression(tmp_path, mode, suffix):
    path = _tar(tmp_path / f"bomb.{suffix}", {"a.wav": b"\0" * (4 * MiB), "b.wav": b"\0" * (4 * MiB)}, mode)
    assert path.stat().st_size * 200 < 8 * MiB
    with pytest.raises(ArchiveRejected, match=r"more than 200 times .*SPEECHQ_MAX_ARCHIVE_RATIO"):
        census(path, max_members=100, budget=1 << 40, ratio=200)
    assert census(path, max_members=100, budget=1 << 40, ratio=1e9) == 2


def test_tar_over_the_byte_budget(tmp_path):
    path = _tar(tmp_path / "big.tar", {"a.wav": b"\1" * MiB, "b.wav": b"\2" * MiB})
    with pytest.raises(ArchiveRejected, match=r"over the budget of 1500000 bytes .*SPEECHQ_MAX_ARCHIVE_BYTES"):
        census(path, max_members=100, budget=1_500_000, ratio=200)


def test_a_tar_is_judged_by_its_headers_before_its_data_is_decompressed(tmp_path):
    """A member that claims 100 GB: refused from its header, with only a few bytes of data behind it."""
    info = tarfile.TarInfo("huge.wav")
    info.size = 100 * 10**9
    path = tmp_path / "claims.tar.gz"
    path.write_bytes(gzip.compress(info.tobuf(tarfile.GNU_FORMAT) + b"\0" * 1024))
    with pytest.raises(ArchiveRejected, match="over the budget"):
        census(path, max_members=100, budget=20 * 2**30, ratio=1e12)


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_member_flood_is_counted_before_extraction(tmp_path, kind):
    names = {f"c{i}.wav": b"RIFF" for i in range(6)}
    if kind == "zip":
        path = tmp_path / "flood.zip"
        with zipfile.ZipFile(path, "w") as zf:
            for n, d in names.items():
                zf.writestr(n, d)
    else:
        path = _tar(tmp_path / "flood.tar.gz", names, "w:gz")
    with pytest.raises(ArchiveRejected, match=r"SPEECHQ_MAX_ARCHIVE_MEMBERS\); nothing was extracted"):
        census(path, max_members=5, budget=1 << 30, ratio=1e9)
    assert census(path, max_members=6, budget=1 << 30, ratio=1e9) == 6


@pytest.fixture
def db_settings(database_url, tmp_path, monkeypatch):
    """Settings on SQLite and on PostgreSQL (which, unlike SQLite, enforces column lengths)."""
    from shared.config import get_settings
    from shared.db import migrate

    monkeypatch.setenv("SPEECHQ_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DATABASE_URL", database_url)
    get_settings.cache_clear()
    migrate()
    yield get_settings()
    get_settings.cache_clear()


def _expand(path, name: str = "calls.tar"):
    from shared import progress, tasks
    from shared.db import session_scope
    from shared.schema import Archive, File, Job
    from workers.ingest import archives

    with session_scope() as db:
        job = Job()
        db.add(job)
        db.flush()
        archive = Archive(job_id=job.id, name=name, path=str(path), size_bytes=path.stat().st_size)
        db.add(archive)
        db.flush()
        job_id, archive_id = job.id, archive.id
    failed = None
    with mock.patch.object(tasks, "send_files") as queued, mock.patch.object(tasks, "send_archive"):
        try:
            archives.expand_archive(archive_id)
        except progress.FilesFailed as exc:
            failed = exc
    sent = [r.name for call in queued.call_args_list for r in call.args[0]]
    with session_scope() as db:
        a = db.get(Archive, archive_id)
        files = {f.name: (f.state.value, f.error) for f in db.query(File).filter(File.job_id == job_id)}
        return {"archive": (a.state.value, a.error), "job": db.get(Job, job_id).state.value, "files": files,
                "sent": sent, "failed": failed}


def test_a_member_name_longer_than_the_column_fails_that_member_only(db_settings, tmp_path):
    long_name = "d/" * 400 + "x" * 300 + ".wav"  # 1,104 characters, 1,114 with the archive's name
    path = _tar(tmp_path / "calls.tar", {long_name: b"RIFF" * 10, "ok.wav": b"RIFF" * 10})
    out = _expand(path)
    assert out["archive"] == ("done", None)
    assert out["sent"] == ["calls.tar/ok.wav"]
    ((shown, (state, error)),) = [(n, v) for n, v in out["files"].items() if n != "calls.tar/ok.wav"]
    assert state == "failed" and len(shown) == 1024 and shown.endswith("\u2026")
    assert shown.startswith("calls.tar/d/d/")
    assert error == ("member name of 1114 characters (with the archive's name) is longer than the limit of 1024; "
                     "shown cut short")
    assert out["job"] == "running"  # ok.wav still to ingest: the archive itself is not what holds it


def test_an_archive_over_the_member_limit_is_refused_before_any_member(db_settings, tmp_path, monkeypatch):
    from shared.config import get_settings

    monkeypatch.setenv("SPEECHQ_MAX_ARCHIVE_MEMBERS", "5")
    get_settings.cache_clear()
    path = _tar(tmp_path / "calls.tar", {f"c{i}.wav": b"RIFF" for i in range(6)})
    out = _expand(path)
    assert out["archive"][0] == "failed" and "nothing was extracted" in out["archive"][1]
    assert out["files"] == {} and out["sent"] == []
    assert out["job"] == "failed"  # ended, not stuck; and not "done" as if the job had held no audio
    assert not path.exists()  # the upload is not kept


def test_an_archive_that_would_pass_the_job_file_limit_is_refused(db_settings, tmp_path, monkeypatch):
    from shared.config import get_settings

    monkeypatch.setenv("SPEECHQ_MAX_JOB_FILES", "3")
    get_settings.cache_clear()
    path = _tar(tmp_path / "calls.tar", {f"c{i}.wav": b"RIFF" for i in range(4)})
    out = _expand(path)
    assert out["archive"] == ("failed", "its 4 members would bring the job to 4 files, over the limit of 3 "
                                        "(SPEECHQ_MAX_JOB_FILES); nothing was extracted")
    assert out["files"] == {}


def test_a_tar_bomb_writes_nothing_to_the_spool(db_settings, tmp_path):
    path = _tar(tmp_path / "bomb.tar.xz", {"a.wav": b"\0" * (8 * MiB)}, "w:xz")
    out = _expand(path, "bomb.tar.xz")
    assert out["archive"][0] == "failed" and "SPEECHQ_MAX_ARCHIVE_RATIO" in out["archive"][1]
    uploads = db_settings.spool / "uploads"
    assert not uploads.exists() or sum(p.stat().st_size for p in uploads.rglob("*") if p.is_file()) == 0
