"""The `speechq` Typer application and what its command modules share."""

from __future__ import annotations

import logging
from typing import Annotated, Optional

import typer
from rich.console import Console

from shared import logs
from shared.config import get_settings

app = typer.Typer(help="speechq: speech analytics for call-center audio archives.", no_args_is_help=True)
models_app = typer.Typer(help="Model folders: fetch, import, create random ones, check.", no_args_is_help=True)
app.add_typer(models_app, name="models")
console = Console()
log = logging.getLogger("api.cli")
ApiOpt = Annotated[Optional[str], typer.Option("--api", help="API base URL (default: this machine's settings)")]


def api_url(url: str | None) -> str:
    s = get_settings()
    return url or f"http://{s.api_host}:{s.api_port}"


def auth_headers() -> dict[str, str]:
    """The Authorization header for SPEECHQ_API_KEY, or none (keyless loopback mode)."""
    key = get_settings().api_key
    return {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logs.setup("DEBUG" if verbose else None)
