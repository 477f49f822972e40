"""Job commands: submit, status, results; their exit codes say how the job ended."""

from __future__ import annotations

import enum
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Annotated, Optional

import httpx
import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from api.cli.app import ApiOpt, api_url, app, auth_headers, console


class ExitCode(enum.IntEnum):
    OK = 0  # the job is done (every file processed or skipped), or still queued or running
    API_ERROR = 1  # the API could not be reached, or it answered with an error
    # 2: Typer's, for a wrong command line or a job the API refused
    NOT_FOUND = 3
    FAILED = 4  # every file failed, or the archives that held the calls were refused whole
    PARTLY_FAILED = 5  # done, but some files failed or some archives were refused whole
    CANCELLED = 6
    TIMEOUT = 7  # still running when the wait ended


SUBMIT_RETRY_S = 30  # how long `submit` retries a lost connection or a 503 before it gives up
EXIT_CODES = ("Exit codes: 0 done, or still running; 1 API unreachable or in error; 2 wrong usage; 3 no such job; "
              "4 job failed; 5 some files failed or archives refused; 6 cancelled.")


def fail(code: ExitCode, message: str) -> typer.Exit:
    """One line on stderr, then the exit code (raise what this returns)."""
    typer.echo(f"speechq: {message}", err=True)
    return typer.Exit(code=int(code))


def outcome(st: dict) -> tuple[ExitCode, str]:
    """The exit code for a job's status, and the line that explains it."""
    job = f"job {st['id']}"
    if st["state"] == "failed":
        return ExitCode.FAILED, (f"{job} failed: " + (st.get("error") or "see the files' errors")
                                 + f" (speechq status {st['id']})")
    if st["state"] == "cancelled":
        return ExitCode.CANCELLED, f"{job} was cancelled"
    refused = st.get("archives_failed", 0)
    if st["state"] == "done" and (st["files_failed"] or refused):
        lost = [f"{st['files_failed']} of {st['files_total']} file(s) failed"] if st["files_failed"] else []
        lost += [f"{refused} archive(s) refused whole"] if refused else []
        return ExitCode.PARTLY_FAILED, f"{job}: " + ", ".join(lost)
    return ExitCode.OK, ""


def finish(st: dict) -> None:
    code, message = outcome(st)
    if code != ExitCode.OK:
        raise fail(code, message)


def get_json(url: str, job_id: str, path: str = "", timeout: float = 60) -> dict:
    """GET /v1/jobs/{id}{path}; a missing job, an unreachable API or an error answer end the command."""
    try:
        r = httpx.get(f"{url}/v1/jobs/{job_id}{path}", headers=auth_headers(), timeout=timeout)
    except httpx.HTTPError as exc:
        raise fail(ExitCode.API_ERROR, f"cannot reach the API at {url}: {exc}") from None
    unauthorized(r)
    if r.status_code == 404:
        raise fail(ExitCode.NOT_FOUND, f"no job {job_id}")
    if r.status_code != 200:
        raise fail(ExitCode.API_ERROR, f"the API answered {r.status_code}: {r.text[:300]}")
    return r.json()


class _Unavailable(Exception):
    """A 503 from the API (its database restarting, or overloaded): worth another try."""


def unauthorized(r: httpx.Response) -> None:
    """A 401 ends the command with what to set."""
    if r.status_code == 401:
        raise fail(ExitCode.API_ERROR, "the API needs a valid API key: set SPEECHQ_API_KEY to one that "
                                       "`speechq keys create` printed")


def submit_paths(api: str, paths: list[Path], labels: str | None, language: str | None, name: str | None,
                 redact: bool = False, word_timings: bool | None = None) -> dict:
    """Upload `paths` as one job. One Idempotency-Key for this call: a request retried after a lost connection
    or a 503 returns the job the first one created, never a second job."""
    data = {k: v for k, v in {"channel_labels": labels, "language": language, "name": name}.items() if v}
    if redact:
        data["redact"] = "true"
    if word_timings is not None:  # unset: the server's SPEECHQ_WORD_TIMINGS
        data["word_timings"] = "true" if word_timings else "false"
    headers = {"Idempotency-Key": str(uuid.uuid4()), **auth_headers()}

    def post() -> httpx.Response:
        files = [("files", (p.name, open(p, "rb"))) for p in paths]
        try:
            r = httpx.post(f"{api}/v1/jobs", files=files, data=data, headers=headers, timeout=600)
        finally:
            for _, (_, f) in files:
                f.close()
        if r.status_code == 503:
            raise _Unavailable(r.text[:300])
        unauthorized(r)
        return r

    retry = Retrying(retry=retry_if_exception_type((httpx.TransportError, _Unavailable)),
                     stop=stop_after_delay(SUBMIT_RETRY_S), wait=wait_exponential(multiplier=0.5, max=10),
                     reraise=True, before_sleep=lambda state: typer.echo(
                         f"speechq: {state.outcome.exception() or 'no answer'}; trying again", err=True))
    try:
        r = retry(post)
    except httpx.HTTPError as exc:
        raise fail(ExitCode.API_ERROR, f"cannot reach the API at {api}: {exc}") from None
    except _Unavailable as exc:
        raise fail(ExitCode.API_ERROR, f"the API is unavailable: {exc}") from None
    if r.status_code not in (200, 201):
        raise typer.BadParameter(f"the API refused the job ({r.status_code}): {r.text}")
    return r.json()


def files_line(st: dict) -> str:
    """A job's files in words: "3 done, 1 failed, 2 skipped of 6" (skipped only where there are some)."""
    skipped = f", {st['files_skipped']} skipped" if st.get("files_skipped") else ""
    return f"{st['files_done']} done, {st['files_failed']} failed{skipped} of {st['files_total']}"


def _info(st: dict) -> str:
    text = f"{st['state']}: files {files_line(st)}, audio {st['audio_done_s']:.0f}/{st['audio_total_s']:.0f} s"
    if st.get("archives_failed"):
        text += f", {st['archives_failed']} archive(s) refused"
    return text + (f" ({st['warning']})" if st.get("warning") else "")


ENDED = ("done", "failed", "cancelled")


def wait_for(api: str, job_id: str, timeout: float | None = None) -> dict:
    """Poll the job until it ends: a progress bar on a terminal; elsewhere (a log file, a pipe, cron's mail)
    a whole line whenever the job's state or files change, and at least once a minute, never cut to a width."""
    polls = _polls(api, job_id, timeout)
    if not console.is_terminal:
        last, shown = None, 0.0
        for st in polls:
            now, key = time.monotonic(), (st["state"], files_line(st), st.get("archives_failed"), st.get("warning"))
            if key != last or now - shown >= 60 or st["state"] in ENDED:
                console.print(f"job {job_id[:8]} {_info(st)}", soft_wrap=True, markup=False, highlight=False)
                last, shown = key, now
            if st["state"] in ENDED:
                return st
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task(f"job {job_id[:8]}", total=None, info="")
        for st in polls:
            total = max(st["audio_total_s"], 0.001)
            bar.update(task, total=total if st["files_total"] else None, completed=st["audio_done_s"],
                       info=escape(_info(st)))
            if st["state"] in ENDED:
                return st
    raise AssertionError("the polls end with an ended job or an exception")


def _polls(api: str, job_id: str, timeout: float | None):
    """The job's status once a second until a poll finds it ended (the caller stops there) or `timeout` passes."""
    deadline = time.monotonic() + timeout if timeout else None
    while True:
        st = get_json(api, job_id, timeout=30)
        yield st
        if deadline and time.monotonic() > deadline:
            raise fail(ExitCode.TIMEOUT, f"job {job_id} still {st['state']} after {timeout:.0f} s")
        time.sleep(1)


def clock(seconds: float) -> str:
    """A time into the call as m:ss.s (h:mm:ss.s past an hour), as audio players show it."""
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{secs:04.1f}" if hours else f"{minutes}:{secs:04.1f}"


def conversation(f: dict) -> list[tuple[str, dict]]:
    """Every channel's turns in time order: (speaker, segment)."""
    turns = [(c["label"], c["index"], s) for c in f["channels"] for s in c["segments"]]
    turns.sort(key=lambda t: (t[2]["start_s"], t[1]))
    return [(label, s) for label, _, s in turns]


def turns_table(turns: list[tuple[str, dict]]) -> Table:
    """A call as a conversation; it fits the terminal: short columns cut with …, the text wraps in its column."""
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for name in ("start", "end", "speaker", "language", "emotion", "event"):
        table.add_column(name, no_wrap=True, overflow="ellipsis", max_width=12)
    table.add_column("text", overflow="fold", min_width=16, ratio=1)
    for speaker, s in turns:
        table.add_row(clock(s["start_s"]), clock(s["end_s"]), escape(speaker), s["language"] or "-",
                      s["emotion2vec_label"] or "-", s["event"] or "-", escape(s["text"] or ""))
    return table


def _file_line(f: dict) -> str:
    line = f"[bold]{escape(f['name'])}[/] {f['state']}"
    if f.get("skipped_reason"):
        line += f": {escape(f['skipped_reason'])}"
    if f["error"]:
        line += f": {escape(f['error'])}"
    if f["duplicate_of"]:
        line += f" (same audio as {escape(f['duplicate_of'])})"
    if f["format"]:
        line += f" ({escape(f['format'])}, {f['sample_rate']} Hz, {f['num_channels']} ch, {f['duration_s']:.1f} s)"
    return line


def show_results(url: str, job_id: str, status: dict | None = None, limit: int | None = 20) -> dict:
    """The job's summary and, per file, its turns as a conversation (the first `limit` of each)."""
    res = get_json(url, job_id, "/results")
    st = status or res["job"]
    console.print(f"job {job_id}: [bold]{st['state']}[/], files {st['files_done']} done, "
                  f"{st['files_failed']} failed, {st.get('files_skipped', 0)} skipped of {st['files_total']}, "
                  f"{st['audio_total_s']:.1f} s of audio"
                  + (f", {st['archives_failed']} archive(s) refused whole" if st.get("archives_failed") else ""))
    for warning in (res.get("warning"), st.get("warning")):
        if warning:
            console.print(f"[bold red]{escape(warning)}[/]")
    for m in res["models"]:
        console.print(f"  model {escape(m['name'])} sha256 {m['sha256'][:12]}…"
                      + ("  [red](RANDOM weights)[/]" if m["random_weights"] else ""))
    listed = {f["name"] for f in res["files"]}
    for e in st.get("errors", []):  # archives refused whole: no file of theirs is listed below
        if e["name"] not in listed:
            console.print(f"[bold]{escape(e['name'])}[/] [red]refused[/]: {escape(e['error'])}")
    for f in res["files"]:
        console.print(_file_line(f))
        turns = conversation(f)
        if turns:
            console.print(turns_table(turns[:limit]))
        if limit is not None and len(turns) > limit:
            more = len(turns) - limit
            console.print(f"  … {more} more turn{'s' if more > 1 else ''}: speechq results {job_id}")
    return st


@app.command(epilog=EXIT_CODES)
def submit(paths: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, help="Audio files or zip/tar")],
           wait: Annotated[bool, typer.Option(help="Show progress until the job ends, then a summary")] = False,
           labels: Annotated[Optional[str], typer.Option(help="Channel labels, e.g. agent,customer")] = None,
           language: Annotated[Optional[str], typer.Option(help="auto, en, zh, yue, ja, ko")] = None,
           name: Annotated[Optional[str], typer.Option()] = None,
           redact: Annotated[bool, typer.Option(help="Redact PII (cards, phones, e-mails, numbers) from the texts")
                             ] = False,
           word_timings: Annotated[Optional[bool], typer.Option(
               "--word-timings/--no-word-timings", help="Time every word of the transcripts (default: the "
               "server's SPEECHQ_WORD_TIMINGS)", show_default=False)] = None,
           api: ApiOpt = None) -> None:
    """Upload files or archives as one job."""
    url = api_url(api)
    job = submit_paths(url, paths, labels, language, name, redact=redact, word_timings=word_timings)
    console.print(f"job [bold]{job['id']}[/] queued: {len(paths)} upload(s)")
    if wait:
        st = wait_for(url, job["id"])
        show_results(url, job["id"], st)
        finish(st)


@app.command(epilog=EXIT_CODES)
def status(job_id: str, api: ApiOpt = None) -> None:
    """Print a job's status as JSON."""
    st = get_json(api_url(api), job_id, timeout=30)
    console.print_json(data=st)
    finish(st)


@app.command(epilog=EXIT_CODES)
def results(job_id: str, as_json: Annotated[bool, typer.Option("--json", help="The API's JSON, unchanged")] = False,
            api: ApiOpt = None) -> None:
    """Print a job's results: per file, the turns of all channels in time order (emotion: emotion2vec+; every
    field, SenseVoice's emotion tag included, is in --json)."""
    url = api_url(api)
    if as_json:
        res = get_json(url, job_id, "/results")
        sys.stdout.write(json.dumps(res, ensure_ascii=False) + "\n")
        st = res["job"]
    else:
        st = show_results(url, job_id, limit=None)
    finish(st)


@app.command(epilog=EXIT_CODES)
def delete(job_id: str, api: ApiOpt = None) -> None:
    """Delete a job for good: its results, rows and audio everywhere (a running job is cancelled first)."""
    url = api_url(api)
    try:
        r = httpx.delete(f"{url}/v1/jobs/{job_id}", headers=auth_headers(), timeout=120)
    except httpx.HTTPError as exc:
        raise fail(ExitCode.API_ERROR, f"cannot reach the API at {url}: {exc}") from None
    unauthorized(r)
    if r.status_code == 404:
        raise fail(ExitCode.NOT_FOUND, f"no job {job_id}")
    if r.status_code != 204:
        raise fail(ExitCode.API_ERROR, f"the API answered {r.status_code}: {r.text[:300]}")
    console.print(f"job {job_id} deleted")
