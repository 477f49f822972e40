"""Fairness between jobs (issue 14) and early first tasks (issue 16): the priority rule, the grouping rule,
and how a real Valkey serves and restores messages of several priorities."""

from unittest import mock

import pytest
import redis

from shared import tasks
from shared.config import get_settings


@pytest.fixture
def settings(monkeypatch):
    def apply(**env):
        for key, value in env.items():
            monkeypatch.setenv(f"SPEECHQ_{key.upper()}", str(value))
        get_settings.cache_clear()

    yield apply
    get_settings.cache_clear()


def sent(send: mock.Mock) -> list[tuple[list[str], int]]:
    """(file ids, priority) of each ingest task sent, in order."""
    return [(c.args[1][0], c.kwargs["priority"]) for c in send.call_args_list]


def refs(n: int, job: str = "job1") -> list[tasks.FileRef]:
    return [tasks.FileRef(f"{job}-f{i}", job, f"c{i}.wav") for i in range(n)]


@pytest.mark.parametrize(("position", "level"), [(0, 0), (2, 0), (3, 1), (14, 1), (15, 2), (62, 2), (63, 3),
                                                 (1022, 4), (1023, 5), (99_999, 8), (262_143, 9), (10**9, 9)])
def test_priority_falls_in_logarithmic_steps_from_the_start_of_a_job(position, level):
    assert tasks.priority(position) == level


def test_priority_never_rises_along_a_job_and_stays_in_the_brokers_range():
    levels = [tasks.priority(p) for p in range(300_000)]
    assert levels == sorted(levels)  # a job's own work keeps its order
    assert set(levels) == set(range(tasks.PRIORITIES))
    assert tasks.app.conf.broker_transport_options["priority_steps"] == list(range(tasks.PRIORITIES))


def test_a_new_jobs_first_files_go_alone_and_the_rest_in_groups(settings):
    settings(ingest_group_files=4, ingest_first_files=3)
    with mock.patch.object(tasks.app, "send_task") as send:
        tasks.send_new_files(refs(11))
    groups = sent(send)
    assert [len(ids) for ids, _ in groups] == [1, 1, 1, 4, 4]
    assert [ids for ids, _ in groups[:3]] == [["job1-f0"], ["job1-f1"], ["job1-f2"]]
    assert sorted(i for ids, _ in groups for i in ids) == sorted(r.id for r in refs(11))
    # positions 0, 1, 2, then 3 (files 3-6) and 7 (files 7-10)
    assert [p for _, p in groups] == [0, 0, 0, 1, 1]


def test_files_added_later_continue_from_their_position(settings):
    """An archive's members follow the files the job held before it: no new head, their own priority."""
    settings(ingest_group_files=4, ingest_first_files=3)
    with mock.patch.object(tasks.app, "send_task") as send:
        tasks.send_new_files(refs(8), start=2000)
    assert [(len(ids), p) for ids, p in sent(send)] == [(4, 5), (4, 5)]
    with mock.patch.object(tasks.app, "send_task") as send:
        tasks.send_new_files(refs(5), start=1)  # two of the head are left to this archive
    assert [(len(ids), p) for ids, p in sent(send)] == [(1, 0), (1, 0), (3, 1)]


def test_no_single_file_head_when_switched_off(settings):
    settings(ingest_group_files=4, ingest_first_files=0)
    with mock.patch.object(tasks.app, "send_task") as send:
        tasks.send_new_files(refs(8))
    assert [len(ids) for ids, _ in sent(send)] == [4, 4]


def test_a_small_job_sent_after_a_huge_one_is_ahead_of_its_tail(settings):
    settings(ingest_group_files=4, ingest_first_files=4)
    with mock.patch.object(tasks.app, "send_task") as send:
        tasks.send_new_files(refs(2000, "huge"))
        tasks.send_new_files(refs(2, "small"))
    groups = sent(send)
    small = [p for ids, p in groups if ids[0].startswith("small")]
    huge = [p for ids, p in groups if ids[0].startswith("huge")]
    assert max(small) == 0
    assert sum(1 for p in huge if p <= max(small)) == 3  # only the huge job's first 3 files are as urgent


def test_work_sent_again_goes_at_its_jobs_position(settings):
    settings(ingest_group_files=4)
    with mock.patch.object(tasks.app, "send_task") as send:
        tasks.resend_files(refs(3, "a") + refs(5, "b") + refs(1, "a"), {"a": 0, "b": 5000})
    by_job = {}
    for ids, p in sent(send):
        by_job.setdefault(ids[0].split("-")[0], []).append((len(ids), p))
    assert by_job == {"a": [(4, 0)], "b": [(3, 6), (2, 6)]}


def test_queue_keys_name_every_priority_list():
    keys = tasks.queue_keys("ingest")
    assert keys[0] == "ingest" and len(keys) == tasks.PRIORITIES and keys[9] == "ingest\x06\x169"


@pytest.fixture
def broker(redis_url, monkeypatch):
    """tasks.send_* through a real Valkey (its own database), with the app's transport options."""
    url = redis_url.rsplit("/", 1)[0] + "/7"
    client = redis.Redis.from_url(url)
    client.flushdb()
    with tasks.app.connection_for_write(url) as conn:
        real = tasks.app.send_task
        monkeypatch.setattr(tasks.app, "send_task", lambda *a, **kw: real(*a, connection=conn, **kw))
        yield conn, client
    client.flushdb()


def received(conn, n: int) -> list[str]:
    """The argsrepr of the next n ingest messages, as a worker's BRPOP gets them (acked)."""
    queue = conn.SimpleQueue("ingest")
    out = []
    for _ in range(n):
        msg = queue.get(block=True, timeout=5)
        out.append(msg.headers["argsrepr"])
        msg.ack()
    queue.close()
    return out


def test_valkey_serves_a_small_job_sent_last_before_a_huge_jobs_tail(broker, settings):
    conn, client = broker
    settings(ingest_group_files=4, ingest_first_files=3)
    tasks.send_new_files(refs(400, "huge"))
    tasks.send_new_files(refs(2, "small"))
    assert sum(client.llen(k) for k in tasks.queue_keys("ingest")) == 3 + 100 + 2
    order = received(conn, 105)
    assert order[:3] == ["job huge: c0.wav", "job huge: c1.wav", "job huge: c2.wav"]  # priority 0, sent first
    assert order[3:5] == ["job small: c0.wav", "job small: c1.wav"]
    assert all(o.startswith("job huge") for o in order[5:])


def test_an_unacked_message_goes_back_to_its_own_priority(broker, settings):
    """A worker that dies holding a message (acks late): the message is restored, not lost, and keeps its place
    behind the urgent work."""
    conn, client = broker
    settings(ingest_group_files=1, ingest_first_files=0)
    tasks.send_files(refs(1, "late"), start=100_000)  # priority 8
    channel = conn.channel()
    msg = channel.basic_get("ingest", no_ack=False)
    assert msg.headers["argsrepr"] == "job late: c0.wav" and msg.properties["priority"] == 8
    assert client.hlen("unacked") == 1 and sum(client.llen(k) for k in tasks.queue_keys("ingest")) == 0
    channel.close()  # as a lost connection does: unacked messages are restored
    assert client.hlen("unacked") == 0
    assert client.llen("ingest\x06\x168") == 1
    tasks.send_files(refs(1, "new"))  # priority 0, sent after the restore
    assert received(conn, 2) == ["job new: c0.wav", "job late: c0.wav"]


def test_a_new_jobs_smallest_files_go_first_and_the_largest_lead_the_groups(settings):
    """Sizes known: the first tasks hold the job's smallest calls (its first batch comes early); the groups
    after them are spread so that each holds at most one of the largest, and they shrink along the queue."""
    settings(ingest_group_files=2, ingest_first_files=2)
    sizes = [50, 900, 10, 700, 30, 800, 600, 20]
    files = [tasks.FileRef(f"f{i}", "job1", f"c{i}.wav", size) for i, size in enumerate(sizes)]
    with mock.patch.object(tasks.app, "send_task") as send:
        tasks.send_new_files(files)
    groups = [ids for ids, _ in sent(send)]
    size_of = {f.id: f.size for f in files}
    assert [[size_of[i] for i in ids] for ids in groups] == [[10], [20], [900, 600], [800, 50], [700, 30]]
