from workers.ingest.lengths import Item, by_length


def test_budget_counts_padding():
    items = [Item(str(i), s) for i, s in enumerate([10, 9, 2, 2, 2, 1])]
    batches, left = by_length(items, budget_seconds=20, flush=True)
    assert not left
    for b in batches:
        assert len(b) * max(i.seconds for i in b) <= 20
    assert sorted(i.id for b in batches for i in b) == [str(i) for i in range(6)]
    assert [i.seconds for i in batches[0]] == [10, 9]


def test_partial_batch_waits_unless_flushed():
    items = [Item(str(i), 3.0) for i in range(5)]
    batches, left = by_length(items, budget_seconds=12)
    assert [len(b) for b in batches] == [4] and len(left) == 1
    batches, left = by_length(items, budget_seconds=12, flush=True)
    assert [len(b) for b in batches] == [4, 1] and not left


def test_segment_longer_than_budget_gets_its_own_batch():
    batches, left = by_length([Item("long", 50), Item("short", 1)], budget_seconds=10, flush=True)
    assert [[i.id for i in b] for b in batches] == [["long"], ["short"]]


def test_max_items():
    batches, _ = by_length([Item(str(i), 0.1) for i in range(10)], budget_seconds=100, max_items=4, flush=True)
    assert [len(b) for b in batches] == [4, 4, 2]
