"""Batch files on the spool: what the ingest worker writes is what the GPU worker reads, and a damaged file is
refused with a clear error rather than read as shorter segments."""

import numpy as np
import pytest

from shared.storage import Spool, read_batch


def _write(tmp_path, pieces):
    spool = Spool(tmp_path)
    path = tmp_path / "b.npz"
    lengths = [len(p) for p in pieces]
    spool.write_batch(path, pieces, segment_ids=np.array(["a", "b", "c"][: len(pieces)]),
                      offsets=np.concatenate(([0], np.cumsum(lengths))))
    return path


def test_a_batch_reads_back_as_written(tmp_path):
    rng = np.random.default_rng(0)
    pieces = [rng.standard_normal(n).astype(np.float32) for n in (16000, 3, 48000)]
    batch = read_batch(_write(tmp_path, pieces))
    offsets = batch["offsets"]
    for i, piece in enumerate(pieces):
        np.testing.assert_array_equal(batch["audio"][offsets[i]:offsets[i + 1]], piece)
    assert [str(x) for x in batch["segment_ids"]] == ["a", "b", "c"]


@pytest.mark.parametrize("keep", [0, 1000, 63999])
def test_a_short_audio_file_is_refused(tmp_path, keep):
    path = _write(tmp_path, [np.ones(16000, np.float32), np.ones(48000, np.float32)])
    audio = path.with_suffix(".f32")
    audio.write_bytes(audio.read_bytes()[: keep * 4])
    with pytest.raises(ValueError, match="64000"):
        read_batch(path)


def test_a_missing_audio_file_is_an_os_error(tmp_path):
    path = _write(tmp_path, [np.ones(10, np.float32)])
    path.with_suffix(".f32").unlink()
    with pytest.raises(OSError):
        read_batch(path)
