from unittest import mock

import pytest

from shared.config import get_settings
from workers import ingest, progress


@pytest.mark.parametrize(("files", "group", "sizes"), [(10, 4, [4, 3, 3]), (3, 4, [3]), (5, 1, [1] * 5), (0, 4, [])])
def test_enqueue_spreads_files_over_even_groups(monkeypatch, files, group, sizes):
    monkeypatch.setenv("SPEECHQ_INGEST_GROUP_FILES", str(group))
    get_settings.cache_clear()
    refs = [ingest.FileRef(f"f{i}", "job1", f"calls.zip/c{i}.wav") for i in range(files)]
    with mock.patch.object(ingest.ingest_files, "apply_async") as send:
        ingest.enqueue(refs)
    get_settings.cache_clear()
    groups = [c.args[0][0] for c in send.call_args_list]
    assert [len(g) for g in groups] == sizes
    assert sorted(i for g in groups for i in g) == sorted(r.id for r in refs)
    assert all(c.kwargs["queue"] == "ingest" for c in send.call_args_list)
    for call, ids in zip(send.call_args_list, groups):  # Flower shows the job and the names, not ids
        by_id = {r.id: r.name for r in refs}
        assert call.kwargs["argsrepr"] == "job job1: " + ", ".join(by_id[i] for i in ids)


def test_task_arguments_are_described_briefly():
    refs = [ingest.FileRef(f"f{i}", "j2" if i % 2 else "j1", f"queue/{'x' * 40}-{i}.wav") for i in range(50)]
    text = ingest.describe(refs)
    assert text.startswith("jobs j1, j2: queue/") and len(text) <= ingest.REPR_CHARS and text.endswith("…")


def test_files_failed_names_the_files_and_pickles():
    import pickle

    exc = progress.FilesFailed.of([(f"calls.zip/{i}.wav", "empty file (0 bytes)") for i in range(7)], 9)
    assert str(exc).startswith("7 of 9 file(s) failed: calls.zip/0.wav: empty file (0 bytes); calls.zip/1.wav")
    assert str(exc).endswith("and 2 more")
    assert str(pickle.loads(pickle.dumps(exc))) == str(exc)  # crosses the prefork pool to the worker's parent


def test_reconcile_sends_no_monitoring_events():
    """Housekeeping every 30 s stays out of Flower: no worker events, and its sender publishes no task-sent."""
    from workers.celery_app import app
    from workers.reconcile import reconcile

    assert reconcile.send_events is False
    assert app.conf.task_send_sent_event  # on for the work, so it must be off for this task alone
    with mock.patch.object(app.amqp, "send_task_message") as send, \
            mock.patch.object(app, "producer_or_acquire") as producer:
        producer.return_value.__enter__.return_value = mock.MagicMock()
        reconcile.apply_async()
    (call,) = send.call_args_list
    dispatcher = call.kwargs["event_dispatcher"]
    assert dispatcher.publish("task-sent", {}, None) is None
    assert call.args[2].sent_event  # Celery built the event; the dispatcher above is what drops it
