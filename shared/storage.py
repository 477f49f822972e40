"""The spool: shared storage that every worker can read (claim-check, contract 2).

Layout under the spool root:
  uploads/<job>/...        original bytes of uploaded files and archive members
  audio/<job>/<channel>.f32  decoded 16 kHz float32 audio of one channel (raw, little-endian)
  batches/<batch>.npz      a packed GPU batch: offsets, segment ids, languages, ITN flags
  batches/<batch>.f32      ... and its segments' audio end to end (raw float32, read in one call)
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000


class Spool:
    def __init__(self, root: Path):
        self.root = Path(root)

    def uploads(self, job_id: str) -> Path:
        return self._dir("uploads", job_id)

    def channel_audio(self, job_id: str, channel_id: str) -> Path:
        return self._dir("audio", job_id) / f"{channel_id}.f32"

    def batch(self, batch_id: str) -> Path:
        return self._dir("batches") / f"{batch_id}.npz"

    def _dir(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def write_batch(self, path: Path, audio: np.ndarray | list[np.ndarray], **arrays: np.ndarray) -> None:
        """Audio first, metadata last: a batch whose .npz exists is complete. `audio` may be the pieces to write
        one after the other (each segment's samples: no copy of them all is made)."""
        def write(f):
            for piece in audio if isinstance(audio, list) else [audio]:
                f.write(memoryview(np.ascontiguousarray(piece, dtype="<f4")).cast("B"))

        _atomic(path.with_suffix(".f32"), write)
        _atomic(path, lambda f: np.savez(f, **arrays))

    def clean_job(self, job_id: str) -> None:
        for kind in ("uploads", "audio"):
            shutil.rmtree(self.root / kind / job_id, ignore_errors=True)

    def audio_folders(self) -> dict[str, Path]:
        """Every job's folder of decoded audio on the spool: {job id: folder}."""
        top = self.root / "audio"
        return {p.name: p for p in top.iterdir() if p.is_dir()} if top.is_dir() else {}

    def batch_files(self) -> list[Path]:
        """Every file under batches/ (complete batches, their audio, and temporary files being written)."""
        top = self.root / "batches"
        return [p for p in top.iterdir() if p.is_file()] if top.is_dir() else []

    def redact(self, message: str, names: dict[str, str] | None = None) -> str:
        """An error message fit for the user: each server path in `names` becomes the name it was submitted as,
        and any other path under the spool becomes '<spool>'. Users never learn the server's layout."""
        for path, name in (names or {}).items():
            if path:
                message = message.replace(str(path), name)
        return re.sub(re.escape(str(self.root)) + r"[^\s'\"]*", "<spool>", message)


def _atomic(path: Path, write) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_raw(path: Path, block_samples: int):
    """Blocks of a raw float32 channel file, read (not mapped) so that memory stays flat."""
    with open(path, "rb") as f:
        while chunk := f.read(block_samples * 4):
            yield np.frombuffer(chunk, dtype=np.float32)


def channel_samples(path: Path) -> np.ndarray:
    """A raw channel file as a read-only memory map: slicing a segment reads only its pages."""
    return np.memmap(path, dtype=np.float32, mode="r")


def read_batch(path: Path) -> dict[str, np.ndarray]:
    """A batch's arrays; its audio is a read-only memory map of the .f32 file. The GPU worker copies each segment
    from it into its staging buffer, so the samples are copied once from the page cache instead of twice (a read
    into a fresh array, then the staging copy). A file whose samples do not match the offsets raises ValueError."""
    with np.load(path, allow_pickle=False) as data:
        out = {k: data[k] for k in data.files}
    audio = path.with_suffix(".f32")
    out["audio"] = channel_samples(audio) if audio.stat().st_size else np.zeros(0, np.float32)  # an empty file: no map
    need = int(out["offsets"][-1]) if "offsets" in out else out["audio"].size
    if need != out["audio"].size:
        raise ValueError(f"the batch holds {out['audio'].size} samples where its segments need {need}")
    return out


def remove_batch(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.with_suffix(".f32").unlink(missing_ok=True)


def clean_after_commit(db, job_id: str, root: Path) -> None:
    """Remove the job's folders from the spool once `db`'s transaction commits (a job that ended: its audio
    is no longer needed, whatever the way it ended). Nothing is removed if the transaction rolls back."""
    from sqlalchemy import event

    if not db.info.get("speechq_spool_listens"):
        db.info["speechq_spool_listens"] = True

        def commit(session) -> None:
            if session.in_nested_transaction():
                return  # a savepoint was released; the transaction that ends the job goes on
            for job, spool_root in session.info.pop("speechq_spool_clean", {}).items():
                Spool(spool_root).clean_job(job)

        def rollback(session) -> None:
            if not session.in_nested_transaction():
                session.info.pop("speechq_spool_clean", None)

        event.listen(db, "after_commit", commit)
        event.listen(db, "after_rollback", rollback)
    db.info.setdefault("speechq_spool_clean", {})[job_id] = root
