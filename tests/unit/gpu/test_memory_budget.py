"""On the GPU: a batch that really runs out of memory under a small budget is halved, and its results
equal those of the same batch run whole."""

import numpy as np
import pytest
import torch


@pytest.mark.gpu
def test_real_out_of_memory_is_split_and_nothing_lost(models_dir, caplog):
    from workers.gpu.engine import Engine
    from workers.runtime import memory
    from workers.runtime.options import Options

    dev = torch.device("cuda:0")
    engine = Engine(Options(dtype="bf16", compile="off", cuda_graphs=False, batch_seconds=1200),
                    models_dir / "SenseVoiceSmall", models_dir / "emotion2vec_plus_large", dev)
    rng = np.random.default_rng(1)
    wavs = [(0.1 * rng.standard_normal(int(s * 16000))).astype(np.float32) for s in rng.uniform(10, 30, 60)]
    langs, itn = ["auto"] * len(wavs), [True] * len(wavs)
    whole = engine.run(wavs, langs, itn)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    card = torch.cuda.get_device_properties(dev).total_memory
    # room for the weights and about one tenth of the batch's activations
    torch.cuda.reset_peak_memory_stats(dev)
    small = engine.run(wavs[:6], langs[:6], itn[:6])
    assert len(small) == 6
    needed = torch.cuda.max_memory_allocated(dev)
    torch.cuda.set_per_process_memory_fraction(needed * 2 / card, dev)
    try:
        split = engine.submit(wavs, langs, itn).results()
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, dev)
    assert "out of GPU memory" in caplog.text
    assert [r.transcript.text for r in split] == [r.transcript.text for r in whole]
    assert [r.emotion.label for r in split] == [r.emotion.label for r in whole]
    assert memory.budget_for(card, None).total_bytes < card
