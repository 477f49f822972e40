"""Channel cap and spool budgets of one file and of its job, enforced while decoding (issue 14)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from shared import samples
from shared.config import Settings
from shared.storage import Spool
from workers.ingest import files, quotas
from workers.ingest.decode import AudioError


def _flac(tmp_path, channels: int, seconds: float = 2.0):
    rate = 8000
    return samples.write(tmp_path / f"c{channels}.flac", 0.05 * np.ones((channels, int(rate * seconds)), np.float32),
                         rate, codec="flac")


def test_eight_channels_are_refused(tmp_path):
    f = SimpleNamespace(path=str(_flac(tmp_path, 8)))
    with pytest.raises(AudioError, match=r"^8 channels, over the limit of 4 \(SPEECHQ_MAX_CHANNELS\)$"):
        files.check(f, Settings(max_channels=4))
    assert files.check(f, Settings(max_channels=8)).channels == 8


def test_a_forged_low_sample_rate_is_refused_before_its_length(tmp_path):
    """A WAV header that claims 1 Hz makes 16 KB of samples 8,000 s of audio (128 million samples at 16 kHz to
    decode, segment and recognise): it fails on its rate, before anything is decoded."""
    import soundfile as sf

    forged = tmp_path / "one-hertz.wav"
    sf.write(forged, np.zeros(8_000, np.float32), 1, subtype="PCM_16")
    f = SimpleNamespace(path=str(forged))
    with pytest.raises(AudioError, match=r"^sample rate 1 Hz, under the lowest of 4000 Hz \(SPEECHQ_MIN_SAMPLE_RATE\)"):
        files.check(f, Settings())
    assert files.check(f, Settings(min_sample_rate=1)).duration_s == 8_000  # under the length limit: let through
    phone = SimpleNamespace(path=str(_flac(tmp_path, 2)))
    assert files.check(phone, Settings()).sample_rate == 8000


@pytest.fixture(autouse=True)
def fresh_scans(monkeypatch):
    """Every read of the job's spool bytes scans, unless a test says otherwise."""
    monkeypatch.setattr(quotas, "SCAN_SECONDS", 0.0)
    monkeypatch.setattr(quotas, "_scanned", {})


def test_a_process_scans_the_jobs_folder_at_most_every_few_seconds(tmp_path, monkeypatch):
    """Between scans: the last scan plus what this process decoded (a scan per file was O(N^2) for a job)."""
    monkeypatch.setattr(quotas, "SCAN_SECONDS", 3600.0)
    spool = Spool(tmp_path / "spool")
    spool.channel_audio("job", "a-0").write_bytes(b"\0" * 900)
    assert quotas.job_spool_bytes(spool, "job") == 900
    spool.channel_audio("job", "b-0").write_bytes(b"\0" * 500)  # another process's file: seen at the next scan
    quotas.decoded("job", 300)  # this process's own
    assert quotas.job_spool_bytes(spool, "job") == 1200
    monkeypatch.setattr(quotas, "SCAN_SECONDS", 0.0)
    assert quotas.job_spool_bytes(spool, "job") == 1400


def test_job_budget_is_what_the_job_has_left(tmp_path):
    spool = Spool(tmp_path / "spool")
    settings = Settings(max_file_spool_bytes=1000, max_job_spool_bytes=1500)
    assert quotas.file_allowance(spool, "job", settings) == 1000
    spool.channel_audio("job", "a-0").write_bytes(b"\0" * 900)
    assert quotas.job_spool_bytes(spool, "job") == 900
    assert quotas.file_allowance(spool, "job", settings) == 600
    spool.channel_audio("job", "b-0").write_bytes(b"\0" * 900)
    assert quotas.file_allowance(spool, "job", settings) == 0


def test_decoding_stops_at_the_job_budget_and_leaves_nothing(tmp_path, monkeypatch):
    from shared.config import get_settings

    monkeypatch.setenv("SPEECHQ_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SPEECHQ_MAX_JOB_SPOOL_BYTES", str(16000 * 4 * 2))  # 1 s of stereo
    get_settings.cache_clear()
    try:
        path = _flac(tmp_path, 2)
        f = SimpleNamespace(path=str(path), job_id="job", id="f1")
        spool = Spool(get_settings().spool)
        info = files.check(f, get_settings())
        with pytest.raises(AudioError, match="over this file's budget of 0.1 MiB"):
            files.decode_to_spool(f, info, spool)
        assert quotas.job_spool_bytes(spool, "job") == 0  # the partial channels are removed
    finally:
        get_settings.cache_clear()


def test_each_channel_on_the_spool_is_its_decoded_samples(tmp_path, monkeypatch):
    """decode_to_spool writes every channel's 16 kHz float32 samples, block by block, to its own file."""
    from shared.config import get_settings
    from workers.ingest import decode

    monkeypatch.setenv("SPEECHQ_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        rate, seconds = 8000, 130.0  # three 60 s decode blocks
        t = np.arange(int(rate * seconds)) / rate
        audio = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 97 * t)]).astype(np.float32)
        path = samples.write(tmp_path / "two.flac", audio, rate, codec="flac")
        f = SimpleNamespace(path=str(path), job_id="job", id="f1")
        info = files.check(f, get_settings())
        paths, n = files.decode_to_spool(f, info, Spool(get_settings().spool))
        expected = np.concatenate(list(decode.stream(path, info)), axis=1)  # the blocks decode_to_spool wrote
        channels = [np.fromfile(p, dtype="<f4") for p in paths]
        assert len(channels) == 2 and all(c.size == n for c in channels)
        assert abs(n - 16000 * seconds) <= 1
        for c, e in zip(channels, expected):
            np.testing.assert_array_equal(c, e)
        # the two channels stay apart, in order: the 440 Hz tone is the louder one
        assert np.sqrt(np.mean(channels[0] ** 2)) > 1.3 * np.sqrt(np.mean(channels[1] ** 2))
    finally:
        get_settings.cache_clear()
