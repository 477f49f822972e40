"""The engine applies the options to the models: compiled layers compute the eager function."""

import numpy as np
import torch

from shared.models import registry
from workers.gpu.engine import optimise
from workers.models.emotion2vec import Emotion2vec
from workers.models.sensevoice import SenseVoice
from workers.runtime.options import Options


def test_compiled_layers_equal_eager(models_dir, wavs):
    """Regional compilation (each layer compiled once, reused) computes the eager function, for
    several batch sizes without a compile per batch size; the FSMN memory is a compiled region of
    its own, as the CUDA graphs replay it."""
    import torch._dynamo

    torch._dynamo.reset()
    cpu = torch.device("cpu")
    sv_am = registry.load_automodel(models_dir / "SenseVoiceSmall")
    e_am = registry.load_automodel(models_dir / "emotion2vec_plus_large")
    eager, e_eager = SenseVoice(sv_am, cpu), Emotion2vec(e_am, cpu)
    comp, e_comp = SenseVoice(sv_am, cpu), Emotion2vec(e_am, cpu)
    optimise(comp, e_comp, Options(dtype="fp32", compile="layers", cuda_graphs=False))
    assert comp.shifted and comp.layer is not eager.layer and e_comp.block is not e_eager.block
    for batch in (wavs, wavs[:2], wavs[1:]):
        langs, itn = ["auto"] * len(batch), [True] * len(batch)
        assert all(np.array_equal(a, b) for a, b in zip(eager.token_ids(batch, langs, itn),
                                                         comp.token_ids(batch, langs, itn)))
        assert (e_eager.scores(batch) - e_comp.scores(batch)).abs().max() < 1e-5


def test_eager_options_leave_the_models_as_built(models_dir):
    cpu = torch.device("cpu")
    sv = SenseVoice(registry.load_automodel(models_dir / "SenseVoiceSmall"), cpu)
    e2v = Emotion2vec(registry.load_automodel(models_dir / "emotion2vec_plus_large"), cpu)
    layer, block = sv.layer, e2v.block
    optimise(sv, e2v, Options(dtype="fp32", compile="off", cuda_graphs=False))
    assert sv.layer is layer and e2v.block is block and not sv.shifted and sv.replay is None


def test_warm_up_leaves_no_batch_shape_to_compile(models_dir):
    """After the engine's warm-up no batch waits for a compilation, one-segment batches included: torch.compile
    specialises dimensions of size 1, and a job's first one-segment batch stalled the GPU worker for 17.9 s
    (H100, BENCHMARKS.md) when the warm-up had none."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from workers.gpu.engine import Engine

    torch._dynamo.reset()
    engine = Engine(Options(dtype="fp32", compile="layers", cuda_graphs=False, packed=True),
                    models_dir / "SenseVoiceSmall", models_dir / "emotion2vec_plus_large", torch.device("cpu"))
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0  # compiled, so a new shape would show here
    rng = np.random.default_rng(3)
    for seconds in ([0.3], [engine.options.max_segment_seconds], [12.0], [0.25, 0.3], [0.4] * 3,
                    list(rng.uniform(0.2, 30, 16)), list(rng.uniform(0.2, 30, 33))):
        wavs = [(0.05 * rng.standard_normal(int(s * 16000))).astype(np.float32) for s in seconds]
        assert len(engine.run(wavs, ["auto"] * len(wavs), [True] * len(wavs))) == len(wavs)
        assert counters["stats"]["unique_graphs"] == graphs, f"a batch of {len(wavs)} segment(s) compiled anew"
