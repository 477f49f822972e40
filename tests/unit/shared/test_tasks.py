"""Tasks are sent by name, in groups that Flower describes readably."""

from unittest import mock

import pytest

from shared import tasks
from shared.config import get_settings


@pytest.mark.parametrize(("files", "group", "sizes"), [(10, 4, [4, 3, 3]), (3, 4, [3]), (5, 1, [1] * 5), (0, 4, [])])
def test_enqueue_spreads_files_over_even_groups(monkeypatch, files, group, sizes):
    monkeypatch.setenv("SPEECHQ_INGEST_GROUP_FILES", str(group))
    get_settings.cache_clear()
    refs = [tasks.FileRef(f"f{i}", "job1", f"calls.zip/c{i}.wav") for i in range(files)]
    with mock.patch.object(tasks.app, "send_task") as send:
        tasks.send_files(refs)
    get_settings.cache_clear()
    assert all(c.args[0] == tasks.INGEST_FILES for c in send.call_args_list)
    groups = [c.args[1][0] for c in send.call_args_list]
    assert [len(g) for g in groups] == sizes
    assert sorted(i for g in groups for i in g) == sorted(r.id for r in refs)
    assert all(c.kwargs["queue"] == "ingest" for c in send.call_args_list)
    for call, ids in zip(send.call_args_list, groups):  # Flower shows the job and the names, not ids
        by_id = {r.id: r.name for r in refs}
        assert call.kwargs["argsrepr"] == "job job1: " + ", ".join(by_id[i] for i in ids)


def test_task_arguments_are_described_briefly():
    refs = [tasks.FileRef(f"f{i}", "j2" if i % 2 else "j1", f"queue/{'x' * 40}-{i}.wav") for i in range(50)]
    text = tasks.describe(refs)
    assert text.startswith("jobs j1, j2: queue/") and len(text) <= tasks.REPR_CHARS and text.endswith("…")
