"""An ingest task stores each call of its group as soon as the VAD has ended that call's channels (issue 16):
the shortest call of a group reaches the batcher after its own blocks, not after the group's longest call, so
the GPU gets a steady stream of segments instead of a wave per group."""

from unittest import mock

import numpy as np
import soundfile as sf

from shared.config import Settings
from shared.schema import File, FileState, Job, JobState, Segment
from workers.ingest.vad import Detector, detector

DIRECTORY = Settings().vad_model_dir
RATE = 16000


def _bursts(seconds: float, seed: int) -> np.ndarray:
    """Noise bursts of 0.5-2 s between pauses of 0.5-2 s: something for the VAD to cut."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * RATE), dtype=np.float32)
    at = 0
    while at < out.size:
        on, off = (int(rng.uniform(0.5, 2.0) * RATE) for _ in range(2))
        piece = out[at:at + on]
        piece[:] = 0.3 * rng.standard_normal(piece.size) * np.hanning(piece.size)
        at += on + off
    return out


def test_streams_end_shortest_first_with_the_segments_of_a_whole_run():
    det: Detector = detector(DIRECTORY, "fp32")
    audio = [_bursts(s, seed) for seed, s in enumerate((150.0, 20.0, 75.0, 0.01))]
    steps = [[i for i, _ in ended] for ended in det.each([[a] for a in audio])]
    assert steps == [[1, 3], [2], [0]]  # 20 s and 0.01 s end in the first 60 s block, 75 s in the second
    together = det.run([[a] for a in audio])
    assert together == [det.run([[a]])[0] for a in audio]
    assert all(together[i] for i in (0, 1, 2)) and together[3] == []


def test_short_calls_are_stored_before_the_long_call_of_their_group_ends(db_scope, tmp_path):
    from workers.ingest import files
    from workers.ingest.vad.scorer import Scorer

    long_s = 200.0
    with db_scope() as db:
        job = Job(state=JobState.queued, files_total=3)
        db.add(job)
        db.flush()
        ids = []
        for name, seconds, seed in (("long.wav", long_s, 1), ("short.wav", 15.0, 2), ("shorter.wav", 9.0, 3)):
            path = tmp_path / name
            sf.write(path, np.stack([_bursts(seconds, seed), _bursts(seconds, seed + 10)], axis=1), RATE,
                     subtype="PCM_16")
            f = File(job_id=job.id, name=name, path=str(path), size_bytes=path.stat().st_size)
            db.add(f)
            db.flush()
            ids.append(f.id)
        job_id = job.id

    steps = []  # VAD steps (one block of every running stream) so far, at each call
    stored = []  # (file name, VAD steps done when it was stored)
    silence, store = Scorer.silence, files._store

    def counting(self, states, feats):
        steps.append(len(states))
        return silence(self, states, feats)

    def recording(d, spans, settings):
        stored.append((d.file.name, len(steps)))
        return store(d, spans, settings)

    with mock.patch.object(Scorer, "silence", counting), mock.patch.object(files, "_store", recording), \
            mock.patch.object(files.batching, "batch_pending") as batch, \
            mock.patch.object(files.ingest_files, "send_event"):
        files.ingest_files(ids)

    blocks = -(-int(long_s) // 60)  # 60 s blocks (SPEECHQ_VAD_BLOCK_SECONDS)
    assert len(steps) == blocks and steps[0] == 6 and steps[-1] == 2  # the short calls' channels left after block 1
    assert stored == [("short.wav", 1), ("shorter.wav", 1), ("long.wav", blocks)]
    assert batch.call_count == 2  # once after each block in which some call landed
    with db_scope() as db:
        states = {f.name: f.state for f in db.query(File).filter(File.job_id == job_id)}
        assert states == dict.fromkeys(("short.wav", "shorter.wav", "long.wav"), FileState.segmented)
        assert db.query(Segment).filter(Segment.job_id == job_id).count() > 0


def test_a_group_that_stores_nothing_still_offers_its_job_to_the_batcher(db_scope, tmp_path):
    """A job's last file in flight may end without landing: a copy of audio already in the job, or a file
    that fails. Its job's waiting segments must be cut into batches then, not at the reconciler's next pass
    (seen: jobs that waited 22-30 s for it)."""
    from datetime import timedelta

    import pytest

    from shared.progress import FilesFailed
    from shared.schema import utcnow
    from workers.ingest import files

    good, junk = tmp_path / "call.wav", tmp_path / "junk.wav"
    sf.write(good, _bursts(5.0, 1), RATE, subtype="PCM_16")
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with db_scope() as db:
        job = Job(state=JobState.running, files_total=3)
        db.add(job)
        db.flush()
        first = File(job_id=job.id, name="call.wav", path=str(good), sha256="a" * 64, state=FileState.segmented,
                     created_at=utcnow() - timedelta(minutes=1))
        copy = File(job_id=job.id, name="copy.wav", path=str(good), sha256="a" * 64)
        bad = File(job_id=job.id, name="junk.wav", path=str(junk), sha256="b" * 64)
        db.add_all([first, copy, bad])
        db.flush()
        first_id, copy_id, bad_id = first.id, copy.id, bad.id

    with mock.patch.object(files.batching, "batch_pending") as batch:
        files.ingest_files([copy_id])
        assert batch.call_count == 1
        with pytest.raises(FilesFailed):
            files.ingest_files([bad_id])
        assert batch.call_count == 2
    with db_scope() as db:
        assert db.get(File, copy_id).duplicate_of == first_id
        assert db.get(File, bad_id).state == FileState.failed


def test_a_truncated_call_lands_with_its_segments_and_a_note(db_scope, tmp_path):
    """The part of a cut-short WAV that is there is segmented as usual; the file keeps a note (shown among the
    job's errors) instead of passing as whole."""
    from workers.ingest import files

    whole, cut = tmp_path / "whole.wav", tmp_path / "cut.wav"
    sf.write(whole, np.stack([_bursts(40.0, 4), _bursts(40.0, 5)], axis=1), RATE, subtype="PCM_16")
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with db_scope() as db:
        job = Job(state=JobState.queued, files_total=1)
        db.add(job)
        db.flush()
        f = File(job_id=job.id, name="cut.wav", path=str(cut), size_bytes=cut.stat().st_size)
        db.add(f)
        db.flush()
        file_id = f.id
    with mock.patch.object(files.batching, "batch_pending"), mock.patch.object(files.ingest_files, "send_event"):
        files.ingest_files([file_id])
    with db_scope() as db:
        f = db.get(File, file_id)
        assert f.state == FileState.segmented and 19.9 < f.duration_s < 20.1
        assert f.error == ("truncated file: its header declares 40.0 s of audio, it holds 20.0 s; "
                           "that part was processed")
        assert db.query(Segment).filter(Segment.file_id == file_id).count() > 0
