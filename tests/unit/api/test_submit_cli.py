"""`speechq submit` sends one Idempotency-Key per invocation and retries lost connections and 503s with it."""

import httpx
import pytest
import typer

from api.cli import jobs


def test_submit_retries_with_one_key(tmp_path, monkeypatch):
    wav = tmp_path / "a.wav"
    wav.write_bytes(b"RIFF0000WAVE")
    calls = []

    def post(url, files, data, headers, timeout):
        calls.append((headers["Idempotency-Key"], files[0][1][1].read()))
        request = httpx.Request("POST", url)
        if len(calls) == 1:
            raise httpx.ConnectError("connection refused", request=request)
        if len(calls) == 2:
            return httpx.Response(503, headers={"Retry-After": "5"}, json={"detail": "restarting"}, request=request)
        return httpx.Response(200, json={"id": "job1", "state": "queued"}, request=request)

    monkeypatch.setattr(jobs.httpx, "post", post)
    assert jobs.submit_paths("http://api", [wav], None, None, None)["id"] == "job1"
    assert len(calls) == 3
    assert len({key for key, _ in calls}) == 1  # the same key on every try
    assert all(body == b"RIFF0000WAVE" for _, body in calls)  # each try sends the whole file again


def test_submit_gives_up_after_the_retry_window(tmp_path, monkeypatch):
    wav = tmp_path / "a.wav"
    wav.write_bytes(b"RIFF")
    monkeypatch.setattr(jobs, "SUBMIT_RETRY_S", 0.5)

    def post(url, **_kw):
        raise httpx.ConnectError("connection refused", request=httpx.Request("POST", url))

    monkeypatch.setattr(jobs.httpx, "post", post)
    with pytest.raises(typer.Exit) as exited:
        jobs.submit_paths("http://api", [wav], None, None, None)
    assert exited.value.exit_code == jobs.ExitCode.API_ERROR


def test_a_refusal_is_not_retried(tmp_path, monkeypatch):
    wav = tmp_path / "a.wav"
    wav.write_bytes(b"RIFF")
    calls = []

    def post(url, **_kw):
        calls.append(url)
        return httpx.Response(422, json={"detail": "unknown language"}, request=httpx.Request("POST", url))

    monkeypatch.setattr(jobs.httpx, "post", post)
    with pytest.raises(typer.BadParameter):
        jobs.submit_paths("http://api", [wav], None, "klingon", None)
    assert len(calls) == 1


@pytest.mark.parametrize("failed, refused, code, line", [
    (0, 0, jobs.ExitCode.OK, ""),
    (1, 0, jobs.ExitCode.PARTLY_FAILED, "job j: 1 of 3 file(s) failed"),
    (0, 1, jobs.ExitCode.PARTLY_FAILED, "job j: 1 archive(s) refused whole"),
    (2, 1, jobs.ExitCode.PARTLY_FAILED, "job j: 2 of 3 file(s) failed, 1 archive(s) refused whole"),
])
def test_a_done_job_with_a_refused_archive_exits_as_partly_failed(failed, refused, code, line):
    st = {"id": "j", "state": "done", "files_total": 3, "files_failed": failed, "archives_failed": refused}
    assert jobs.outcome(st) == (code, line)


def test_results_name_each_archive_refused_whole_with_its_reason(monkeypatch):
    """An archive refused whole has no file row: the summary names it and says why, before the files."""
    st = {"id": "j", "state": "done", "files_total": 1, "files_done": 1, "files_failed": 0, "files_skipped": 0,
          "audio_total_s": 20.0, "archives_failed": 1,
          "errors": [{"name": "bad.zip", "error": "not a readable zip or tar archive: invalid header"},
                     {"name": "good.wav", "error": "truncated file: its header declares 40.0 s of audio, it holds "
                                                   "20.0 s; that part was processed"}]}
    good = {"name": "good.wav", "state": "done", "error": st["errors"][1]["error"], "duplicate_of": None,
            "format": "wav/pcm_s16le", "sample_rate": 8000, "num_channels": 2, "duration_s": 20.0, "channels": []}
    monkeypatch.setattr(jobs, "get_json", lambda *a, **k: {"job": st, "models": [], "files": [good]})
    monkeypatch.setattr(jobs, "conversation", lambda f: [])
    monkeypatch.setattr(jobs.console, "width", 200)
    with jobs.console.capture() as out:
        jobs.show_results("http://api", "j", st)
    lines = [line for line in out.get().splitlines() if line.strip()]
    assert lines[0].endswith("20.0 s of audio, 1 archive(s) refused whole")
    assert lines[1] == "bad.zip refused: not a readable zip or tar archive: invalid header"
    assert lines[2].startswith("good.wav done: truncated file:")
    assert not any(line.startswith("good.wav refused") for line in lines)


def test_the_files_line_is_words():
    st = {"files_done": 3, "files_failed": 1, "files_skipped": 0, "files_total": 4}
    assert jobs.files_line(st) == "3 done, 1 failed of 4"
    assert jobs.files_line({**st, "files_skipped": 2, "files_total": 6}) == "3 done, 1 failed, 2 skipped of 6"


def test_waiting_into_a_log_prints_whole_lines_when_something_changes(monkeypatch):
    """Output that is not a terminal (a nightly job's log) gets a whole line per change of state or files, not
    a progress bar cut at 80 columns."""
    base = {"id": "0123456789abcdef", "files_total": 400, "files_done": 0, "files_failed": 0, "files_skipped": 0,
            "audio_total_s": 1_440_000.0, "audio_done_s": 0.0, "archives_failed": 0,
            "warning": "3 of 400 files are waiting for a GPU worker that has been unreachable for 2 minutes"}
    seen = [{**base, "state": "queued"}, {**base, "state": "running"},
            {**base, "state": "running", "audio_done_s": 5.0},
            {**base, "state": "running", "files_done": 399, "files_failed": 1},
            {**base, "state": "done", "files_done": 399, "files_failed": 1, "audio_done_s": 1_440_000.0}]
    polls = iter(seen)
    monkeypatch.setattr(jobs, "get_json", lambda *a, **k: next(polls))
    monkeypatch.setattr(jobs.time, "sleep", lambda s: None)
    monkeypatch.setattr(jobs.console, "_force_terminal", False)
    monkeypatch.setattr(jobs.console, "width", 80)
    with jobs.console.capture() as out:
        st = jobs.wait_for("http://api", base["id"])
    assert st["state"] == "done"
    lines = out.get().splitlines()
    assert lines == [f"job 01234567 {jobs._info(s)}" for s in (seen[0], seen[1], seen[3], seen[4])]
    assert len(lines[-1]) > 80 and lines[-1].endswith("(3 of 400 files are waiting for a GPU worker that has been "
                                                      "unreachable for 2 minutes)")
