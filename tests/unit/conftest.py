"""Fixtures of the unit tests: a few clips of noise of mixed lengths."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def wavs():
    rng = np.random.default_rng(7)
    lengths = [16000 * 3, 16000 * 5 + 123, 40000, 12345]
    return [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in lengths]
