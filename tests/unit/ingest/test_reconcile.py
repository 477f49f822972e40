"""The reconciler stays out of the operator's way."""

from unittest import mock


def test_reconcile_sends_no_monitoring_events():
    """Housekeeping every 30 s stays out of Flower: no worker events, and its sender publishes no task-sent."""
    from shared.tasks import app
    from workers.ingest.reconcile import reconcile

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


def test_a_stale_row_is_sent_again_once_per_deadline_not_on_every_tick(monkeypatch):
    """A row still `running` past the deadline cannot be touched (the claim takes over only stale rows), so the
    reconciler remembers what it sent: one reminder per deadline, whatever the interval."""
    from workers.ingest import reconcile

    clock = [1000.0]
    monkeypatch.setattr(reconcile.time, "monotonic", lambda: clock[0])
    reminders = reconcile.Reminders()
    deadline = reconcile.get_settings().task_deadline_seconds
    assert reminders.due(["a", "b"]) == ["a", "b"]
    clock[0] += deadline / 2
    assert reminders.due(["a", "b", "c"]) == ["c"]
    clock[0] += deadline / 2 + 1
    assert reminders.due(["a", "b", "c"]) == ["a", "b"]
