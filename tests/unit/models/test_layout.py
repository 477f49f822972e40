"""The packed layout: segments end to end with gaps, and the attention sequences that tile it."""

import numpy as np
import torch

from workers.models.layout import Layout


def test_varlen_sequences_tile_the_packed_sequence():
    """Varlen attention runs on sequences that tile the packed sequence: every segment is one of
    them, gaps and the bucket's tail padding are others, none is longer than `longest`."""
    lengths = np.array([300, 7, 120, 1])
    for bucketed in (False, True):
        layout = Layout.build(lengths, width=300, gap=5, device=torch.device("cpu"), varlen=True,
                              bucketed=bucketed)
        bounds = layout.seqs.numpy().astype(np.int64)
        assert bounds[0] == 0 and bounds[-1] == layout.total and np.all(np.diff(bounds) >= 0)
        pairs = set(zip(bounds[:-1].tolist(), bounds[1:].tolist()))
        for start, n in zip(layout.starts.tolist(), lengths.tolist()):
            assert (start, start + n) in pairs
        assert np.diff(bounds).max() <= layout.longest
        real = int(layout.starts[-1] + lengths[-1])
        if bucketed:
            assert layout.total >= real and layout.total - real <= layout.total // 16
            assert layout.longest == 512 and (len(bounds) - 1) & (len(bounds) - 2) == 0  # powers of two
            assert len(bounds) - 1 >= layout.total // 40
            assert not layout.valid[real:].any()
        else:
            assert layout.total == real and layout.longest == 300


def test_maps_round_trip():
    layout = Layout.build(np.array([3, 1, 4]), width=4, gap=2, device=torch.device("cpu"))
    assert layout.total == 2 + 3 + 2 + 1 + 2 + 4
    assert layout.starts.tolist() == [2, 7, 10]
    padded = torch.arange(12, dtype=torch.float32).reshape(3, 4, 1) + 1
    packed = layout.pack(padded)[:, 0]
    assert packed[layout.valid].tolist() == [1, 2, 3, 5, 9, 10, 11, 12]
    assert layout.positions[layout.valid].tolist() == [1, 2, 3, 1, 1, 2, 3, 4]
    back = layout.unpack(packed[:, None])[:, :, 0]
    for row, n in enumerate([3, 1, 4]):
        assert torch.equal(back[row, :n], padded[row, :n, 0])
