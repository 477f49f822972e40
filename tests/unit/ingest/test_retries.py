"""Issue 13: a group whose task died is split so that a poison file stands alone; an error a file raised is
kept on its row, and is what the file fails with once its attempts are used up."""

from unittest import mock

from shared.config import get_settings
from shared.schema import File, FileState, Job


def _files(session_scope, *attempts_and_states) -> list[str]:
    with session_scope() as db:
        job = Job()
        db.add(job)
        db.flush()
        rows = [File(job_id=job.id, name=f"call{i}.wav", path=f"/x/{i}", attempts=a, state=s)
                for i, (a, s) in enumerate(attempts_and_states)]
        db.add_all(rows)
        db.flush()
        return [r.id for r in rows]


def test_a_fresh_group_is_not_split(db_scope):
    from workers.ingest import retries

    ids = _files(db_scope, (0, FileState.queued), (0, FileState.queued))
    with mock.patch("shared.tasks.send_files") as send:
        assert not retries.split(ids)
    send.assert_not_called()


def test_a_group_that_died_runs_its_tried_files_alone(db_scope):
    from workers.ingest import retries

    ids = _files(db_scope, (1, FileState.ingesting), (1, FileState.ingesting), (0, FileState.queued),
                 (0, FileState.queued), (1, FileState.segmented))
    with mock.patch("shared.tasks.send_files") as send:
        assert retries.split(ids)
    sent = [[f.id for f in call.args[0]] for call in send.call_args_list]
    assert sorted(sent[:2]) == sorted([[ids[0]], [ids[1]]])  # each tried file alone
    assert sent[2] == [ids[2], ids[3]]  # the untried ones together; the finished one not at all
    assert not retries.split([ids[0]])  # one file alone is never split


def test_an_error_raised_is_kept_and_the_file_tried_again_alone(db_scope):
    from workers.ingest import retries

    (fid,) = _files(db_scope, (1, FileState.ingesting))
    with mock.patch("shared.tasks.send_files") as send:
        retries.again_alone(fid, OSError(27, "File too large"))
    (call,) = send.call_args_list
    assert [f.id for f in call.args[0]] == [fid]
    with db_scope() as session:
        f = session.get(File, fid)
        assert f.state == FileState.queued and f.error == "OSError: [Errno 27] File too large"
        f.attempts = get_settings().max_attempts + 1
        assert retries.gave_up(f) == (f"gave up after {get_settings().max_attempts} attempts "
                                      "(last error: OSError: [Errno 27] File too large)")
        f.error = None
        assert "process died on this file" in retries.gave_up(f)
