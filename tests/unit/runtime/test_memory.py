"""The GPU memory budget: forwards cut to fit beside the weights; a forward out of memory is halved."""

import numpy as np
import pytest
import torch

from workers.runtime import memory
from workers.runtime.memory import GIB, Budget, budget_for, chunks


def test_chunks_cover_every_segment_in_order_within_the_limit():
    seconds = np.array([10, 10, 25, 5, 40, 1, 1], dtype=float)
    parts = chunks(seconds, 30)
    assert [i for p in parts for i in range(len(seconds))[p]] == list(range(len(seconds)))
    for p in parts:
        assert seconds[p].sum() <= 30 or len(seconds[p]) == 1  # a longer segment stands alone
    assert chunks(seconds, 1e9) == [slice(0, 7)]
    assert chunks(np.array([]), 30) == []


def test_budget_from_the_card_or_the_setting():
    card = 80 * GIB
    assert budget_for(card, None).total_bytes == card - memory.CARD_MARGIN_BYTES
    assert budget_for(card, 16).total_bytes == 16 * GIB and budget_for(card, 16).fraction == pytest.approx(0.2)
    assert budget_for(8 * GIB, 24).total_bytes == 8 * GIB  # never more than the card
    with pytest.raises(ValueError, match="SPEECHQ_GPU_MEMORY_GB"):
        budget_for(card, 0)


def test_chunk_seconds_shrink_with_the_budget_and_never_below_one_segment():
    weights = 2 * GIB
    big, small, tiny = Budget(24 * GIB, 80 * GIB), Budget(6 * GIB, 80 * GIB), Budget(3 * GIB, 80 * GIB)
    assert big.chunk_seconds(weights, 1200, 30) == 1200
    assert 30 < small.chunk_seconds(weights, 1200, 30) < 1200
    assert tiny.chunk_seconds(weights, 1200, 30) == 30


@pytest.fixture(scope="module")
def engine(models_dir):
    from workers.gpu.engine import Engine
    from workers.runtime.options import Options

    cpu = torch.device("cpu")
    return Engine(Options(dtype="fp32", compile="off", cuda_graphs=False, batch_seconds=60),
                  models_dir / "SenseVoiceSmall", models_dir / "emotion2vec_plus_large", cpu)


def _same(a, b) -> bool:
    return all(x.transcript.text == y.transcript.text and x.emotion.label == y.emotion.label
               and x.emotion.scores == pytest.approx(y.emotion.scores, abs=1e-5) for x, y in zip(a, b)) and len(a) == len(b)


def test_a_batch_cut_to_the_budget_gives_the_whole_batch_results(engine, wavs):
    langs, itn = ["auto"] * len(wavs), [True] * len(wavs)
    whole = engine.run(wavs, langs, itn)
    engine.chunk_seconds = 4.0
    try:
        flight = engine.submit(wavs, langs, itn)
        assert len(flight.parts) >= 3
        assert _same(flight.results(), whole)
    finally:
        engine.chunk_seconds = engine.options.batch_seconds


def test_a_forward_out_of_memory_is_halved_until_it_fits(engine, wavs, monkeypatch, caplog):
    langs, itn = ["auto"] * len(wavs), [True] * len(wavs)
    whole = engine.run(wavs, langs, itn)
    launch = engine._launch

    def tight(ws, ls, it):  # this device holds two segments at most
        if len(ws) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return launch(ws, ls, it)

    monkeypatch.setattr(engine, "_launch", tight)
    assert _same(engine.submit(wavs, langs, itn).results(), whole)
    assert "out of GPU memory on 4 segments" in caplog.text

    monkeypatch.setattr(engine, "_launch", lambda *a: (_ for _ in ()).throw(torch.OutOfMemoryError("oom")))
    with pytest.raises(torch.OutOfMemoryError):  # one segment that does not fit is not hidden
        engine.submit(wavs[:1], langs[:1], itn[:1])
