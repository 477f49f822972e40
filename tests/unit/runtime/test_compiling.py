"""workers.runtime.compiling: the batch dimension stays symbolic, also inside a region compiled whole."""

import torch

from workers.runtime.compiling import batch_dynamic, compiled


def _scaled_rows(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    batch_dynamic(x, lengths)  # as Emotion2vec._encode marks its inputs
    valid = torch.arange(x.shape[1])[None, :] < lengths[:, None]
    return (x * valid).sum(1) / lengths


def test_marking_inside_a_region_compiled_whole_traces():
    # SPEECHQ_COMPILE=model compiles Emotion2vec.encode whole, which calls batch_dynamic: dynamo refuses to trace
    # maybe_mark_dynamic itself ("Attempt to trace forbidden callable"), so the marking must step aside there
    fn = compiled(_scaled_rows)
    for rows, width in ((3, 7), (5, 11), (1, 4)):
        x = torch.randn(rows, width)
        lengths = torch.randint(1, width + 1, (rows,)).float()
        torch.testing.assert_close(fn(x, lengths), _scaled_rows(x, lengths))


def test_marking_outside_compilation_marks_the_batch_dimension():
    x = torch.zeros(4, 3)
    batch_dynamic(x)
    assert 0 in getattr(x, "_dynamo_weak_dynamic_indices", set())
