from unittest import mock

import pytest

from shared.config import get_settings
from workers import ingest


@pytest.mark.parametrize(("files", "group", "sizes"), [(10, 4, [4, 3, 3]), (3, 4, [3]), (5, 1, [1] * 5), (0, 4, [])])
def test_enqueue_spreads_files_over_even_groups(monkeypatch, files, group, sizes):
    monkeypatch.setenv("SPEECHQ_INGEST_GROUP_FILES", str(group))
    get_settings.cache_clear()
    ids = [f"f{i}" for i in range(files)]
    with mock.patch.object(ingest.ingest_files, "apply_async") as send:
        ingest.enqueue(ids)
    get_settings.cache_clear()
    groups = [c.args[0][0] for c in send.call_args_list]
    assert [len(g) for g in groups] == sizes
    assert sorted(i for g in groups for i in g) == sorted(ids)
    assert all(c.kwargs["queue"] == "ingest" for c in send.call_args_list)
