"""Word timings per job: in a batch holding segments of several jobs, only the segments whose job asked
for timings are aligned; the others keep none, and every transcript is the same either way."""

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def engine(models_dir):
    from workers.gpu.engine import Engine
    from workers.runtime.options import Options

    return Engine(Options(dtype="fp32", compile="off", cuda_graphs=False, batch_seconds=60, max_segment_seconds=30),
                  models_dir / "SenseVoiceSmall", models_dir / "emotion2vec_plus_large", torch.device("cpu"))


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(11)
    wavs = [(rng.standard_normal(n) * s).astype(np.float32)
            for n, s in [(16000 * 3, 0.1), (16000 * 7, 0.3), (40000, 1.0), (12345, 0.1), (16000 * 5, 0.2)]]
    return wavs, ["auto", "en", "auto", "zh", "en"], [True, False, True, True, False]


def _words(result):
    w = result.transcript.words
    return None if w is None else [(x.text, x.start_s, x.end_s) for x in w]


def test_only_the_timed_rows_are_aligned(engine, batch, monkeypatch):
    from workers.models import alignment

    wavs, langs, itn = batch
    every = engine.run(wavs, langs, itn, [True] * len(wavs))
    assert all(r.transcript.words is not None for r in every)
    assert sum(len(r.transcript.tokens) for r in every) > 0, "the random model transcribes something to time"
    aligned = []
    align = alignment.align
    monkeypatch.setattr(alignment, "align", lambda tok, texts, *a, **k: (aligned.append(len(texts)),
                                                                          align(tok, texts, *a, **k))[1])
    timed = [False, True, False, True, True]
    mixed = engine.run(wavs, langs, itn, timed)
    assert aligned == [3], "one alignment, of the three timed segments only"
    for flag, got, ref in zip(timed, mixed, every):
        assert got.transcript.text == ref.transcript.text and got.emotion.label == ref.emotion.label
        assert _words(got) == (_words(ref) if flag else None)
        assert (got.transcript.tokens is None) != flag


def test_a_batch_without_timed_rows_copies_no_frames(engine, batch, monkeypatch):
    from workers.models import alignment

    wavs, langs, itn = batch
    monkeypatch.setattr(alignment, "align", lambda *a, **k: pytest.fail("nothing asked for timings"))
    flight = engine.submit(wavs, langs, itn, [False] * len(wavs))
    assert flight.tokens.frames is None
    assert all(r.transcript.words is None for r in flight.results())
    assert all(r.transcript.words is None for r in engine.run(wavs, langs, itn))  # the default: none


def test_timed_rows_follow_their_segments_through_chunks(engine, batch, monkeypatch):
    """A batch over the memory budget's forward runs as several: each part keeps its own rows' choice."""
    wavs, langs, itn = batch
    every = engine.run(wavs, langs, itn, [True] * len(wavs))
    monkeypatch.setattr(engine, "chunk_seconds", 8.0)
    timed = [True, False, False, True, False]
    flight = engine.submit(wavs, langs, itn, timed)
    assert len(flight.parts) > 2
    for flag, got, ref in zip(timed, flight.results(), every):
        assert _words(got) == (_words(ref) if flag else None)
