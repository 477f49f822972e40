"""CUDA graphs: bucketed shapes, and replays that equal the compiled forward (on the GPU)."""

import numpy as np
import pytest
import torch

from workers.runtime.graphs import bucket


def test_buckets_waste_little():
    assert bucket(10) == 256 and bucket(256) == 256
    for n in (257, 1000, 4097, 20_000, 65_535):
        b = bucket(n)
        assert n <= b <= n * 17 / 16
    assert len({bucket(n) for n in range(16_385, 32_769)}) == 16  # 16 steps an octave


@pytest.mark.gpu
def test_replays_equal_the_compiled_forward(models_dir, wavs):
    """The packed varlen encoder replayed from CUDA graphs gives the tokens of the same compiled
    layers run directly on the same bucketed shapes, batch after batch: shapes that share a graph,
    shapes that need a new one, and a graph replayed after another."""
    from shared.models import registry
    from workers.gpu.engine import optimise
    from workers.models.emotion2vec import Emotion2vec
    from workers.models.sensevoice import SenseVoice
    from workers.runtime.graphs import GraphCache
    from workers.runtime.options import Options

    dev = torch.device("cuda")
    am = registry.load_automodel(models_dir / "SenseVoiceSmall", device="cuda")
    e2v = Emotion2vec(registry.load_automodel(models_dir / "emotion2vec_plus_large", device="cuda"), dev)
    graphed = SenseVoice(am, dev, torch.bfloat16)
    optimise(graphed, e2v, Options(compile="layers", cuda_graphs=True))
    direct = SenseVoice(am, dev, torch.bfloat16)
    optimise(direct, e2v, Options(compile="layers", cuda_graphs=False))

    class Direct(GraphCache):  # the same bucketed shapes, run without capturing
        def run(self, key, fn, *inputs):
            return fn(*inputs)

    direct.replay = Direct()
    assert graphed.varlen and direct.varlen
    rng = np.random.default_rng(3)
    extra = [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in (16000 * 40, 16000 * 2 + 5, 3000)]
    batches = [wavs, wavs[:2], wavs + extra, wavs[1:], wavs]
    for batch in batches:
        langs, itn = ["auto"] * len(batch), [True] * len(batch)
        pairs = zip(direct.token_ids(batch, langs, itn), graphed.token_ids(batch, langs, itn))
        assert all(np.array_equal(a, b) for a, b in pairs)
    assert 1 < len(graphed.replay.graphs) < len(batches)
