"""Call commands: the redacted copy of a call's audio."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import httpx
import typer

from api.cli.app import ApiOpt, api_url, app, auth_headers, console
from api.cli.jobs import ExitCode, fail, unauthorized


@app.command("redacted-audio")
def redacted_audio(job_id: str, file_id: Annotated[str, typer.Argument(help="The file's id, as in the results")],
                   output: Annotated[Path, typer.Option("-o", "--output", help="WAV file to write")],
                   silence: Annotated[bool, typer.Option(help="Silence instead of a 1 kHz tone")] = False,
                   api: ApiOpt = None) -> None:
    """Write a call's audio with every redacted span replaced (only while the recording is kept: an upload until
    its job ends, a server-side path while it exists)."""
    url = api_url(api)
    try:
        with httpx.stream("GET", f"{url}/v1/jobs/{job_id}/files/{file_id}/audio", headers=auth_headers(),
                          params={"redacted": "true", "fill": "silence" if silence else "tone"}, timeout=600) as r:
            unauthorized(r)
            if r.status_code == 404:
                raise fail(ExitCode.NOT_FOUND, f"no file {file_id} in job {job_id}")
            if r.status_code != 200:
                r.read()
                raise fail(ExitCode.API_ERROR, f"the API answered {r.status_code}: {r.text[:300]}")
            with open(output, "wb") as out:
                for chunk in r.iter_bytes():
                    out.write(chunk)
    except httpx.HTTPError as exc:
        raise fail(ExitCode.API_ERROR, f"cannot reach the API at {url}: {exc}") from None
    console.print(f"redacted audio written to {output}")
