"""The batched emotion2vec forward computes funasr's per-utterance function under padding."""

import numpy as np
import pytest
import torch

from shared.models import registry
from workers.models.emotion2vec import Emotion2vec, split_by_length
from workers.runtime.staging import pad_batch

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def automodel(models_dir):
    return registry.load_automodel(models_dir / "emotion2vec_plus_large")


def test_batch_matches_funasr(automodel, wavs):
    ours = Emotion2vec(automodel, CPU)
    batch = ours.scores(wavs).numpy()
    for i, w in enumerate(wavs):
        ref = automodel.generate(input=w, extract_embedding=False, disable_pbar=True)[0]["scores"]
        assert np.abs(batch[i] - np.asarray(ref)[ours.keep]).max() < 1e-3
    results = ours(wavs)
    assert all(abs(sum(r.scores.values()) - 1) < 1e-4 and r.label in r.scores for r in results)


def test_padding_does_not_leak(automodel, wavs):
    """A short utterance scores the same alone and beside a long one (masks under padding)."""
    ours = Emotion2vec(automodel, CPU)
    alone = ours.scores([wavs[3]])
    padded = ours.scores([wavs[1], wavs[3]])[1:]
    assert torch.allclose(alone, padded, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_within_2e_2(automodel, wavs, dtype):
    ref = Emotion2vec(automodel, CPU).scores(wavs)
    low = Emotion2vec(automodel, CPU, dtype).scores(wavs)
    assert (low - ref).abs().max() < 2e-2


def test_runs_of_similar_length_equal_one_batch(automodel, wavs):
    """launch() with host lengths runs rows in length runs, each padded to its own longest: the
    scores are those of the whole padded batch, in the caller's order."""
    ours = Emotion2vec(automodel, CPU)
    ours.split_min = 0  # the test clips are short: split them anyway
    wav, lengths = pad_batch(wavs, CPU)
    split = ours.launch(wav, lengths, torch.tensor([len(w) for w in wavs])).probs
    assert torch.allclose(split, ours.scores(wavs), atol=1e-5)


def test_split_by_length_keeps_runs_within_ratio():
    runs = split_by_length([100, 95, 81, 79, 40, 39, 10], ratio=0.8)
    assert runs == [(0, 3), (3, 4), (4, 6), (6, 7)]
    assert split_by_length([100, 10, 5], ratio=0.8, min_padded=250) == [(0, 3)]
    assert split_by_length([]) == []
