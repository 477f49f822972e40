"""`speechq list`: find jobs by state, name and creation time, newest first, a page at a time."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Annotated, Optional

import httpx
import typer
from rich.markup import escape
from rich.table import Table

from api.cli.app import ApiOpt, api_url, app, auth_headers, console
from api.cli.jobs import ExitCode, fail, files_line, unauthorized

STATES = ("queued", "running", "done", "failed", "cancelled")


def fetch(url: str, params: dict) -> tuple[list[dict], str | None]:
    """One page of GET /v1/jobs and the cursor of the next, if any."""
    try:
        r = httpx.get(f"{url}/v1/jobs", params=params, headers=auth_headers(), timeout=60)
    except httpx.HTTPError as exc:
        raise fail(ExitCode.API_ERROR, f"cannot reach the API at {url}: {exc}") from None
    unauthorized(r)
    if r.status_code == 422:
        raise typer.BadParameter(r.text[:300])
    if r.status_code != 200:
        raise fail(ExitCode.API_ERROR, f"the API answered {r.status_code}: {r.text[:300]}")
    return r.json(), r.headers.get("X-Next-Cursor")


@app.command("list")
def list_jobs(state: Annotated[Optional[list[str]], typer.Option("--state", "-s", help="queued, running, done, "
                                                                 "failed or cancelled (repeat for several)")] = None,
              name: Annotated[Optional[str], typer.Option(help="Part of the job's name, any case")] = None,
              since: Annotated[Optional[datetime], typer.Option(help="Created at or after (UTC)")] = None,
              until: Annotated[Optional[datetime], typer.Option(help="Created before (UTC)")] = None,
              limit: Annotated[int, typer.Option(min=1, max=500, help="Jobs per page")] = 50,
              every: Annotated[bool, typer.Option("--all", help="Every matching job, page after page")] = False,
              cursor: Annotated[Optional[str], typer.Option(help="Continue from the cursor a page printed")] = None,
              as_json: Annotated[bool, typer.Option("--json", help="One job's status as JSON per line")] = False,
              api: ApiOpt = None) -> None:
    """List jobs, newest first."""
    for s in state or []:
        if s not in STATES:
            raise typer.BadParameter(f"{s!r}: one of {', '.join(STATES)}", param_hint="--state")
    url = api_url(api)
    params: dict = {"limit": limit, "state": state or [], "name": name,
                    "created_after": since.isoformat() if since else None,
                    "created_before": until.isoformat() if until else None, "cursor": cursor}
    params = {k: v for k, v in params.items() if v not in (None, [])}
    table = Table("id", "name", "state", "files", "audio s", "created (UTC)", box=None, header_style="bold")
    shown = 0
    while True:
        jobs, cursor = fetch(url, params)
        for j in jobs:
            if as_json:
                sys.stdout.write(json.dumps(j, ensure_ascii=False) + "\n")
            else:
                files = files_line(j)
                table.add_row(j["id"], escape(j["name"] or "-"), j["state"], files, f"{j['audio_done_s']:.0f}",
                              j["created_at"].replace("T", " ")[:19])
        shown += len(jobs)
        if not (every and cursor):
            break
        params["cursor"] = cursor
    if not as_json:
        console.print(table if shown else "no job matches")
        if cursor:
            console.print(f"more jobs match: --cursor {cursor} (or --all)")
