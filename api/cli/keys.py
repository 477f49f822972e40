"""`speechq keys`: create, list and revoke API keys, in the database this machine's settings name.

These commands need the database, not the API: an operator of the server runs them. A key is printed
once, when it is created; only a salted hash of it is stored (api/keys.py).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from api.cli.app import app, console

keys_app = typer.Typer(help="API keys: every request to a non-loopback API needs one.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _ts(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


@keys_app.command("create")
def create(name: Annotated[str, typer.Option("--name", help="Who or what uses the key, e.g. a team or a script")],
           admin: Annotated[bool, typer.Option("--admin", help="Sees every job and the health details")] = False
           ) -> None:
    """Create a key and print it once (it cannot be shown again)."""
    from api import keys
    from shared.db import migrate, session_scope

    if not name.strip() or len(name) > 255:
        raise typer.BadParameter("a name of 1 to 255 characters", param_hint="--name")
    migrate()
    with session_scope() as db:
        row, key = keys.create(db, name.strip(), admin)
        key_id = row.id
    # The key goes to stdout alone, so that `KEY=$(speechq keys create ...)` works; the rest to stderr.
    typer.echo(f"created {'admin ' if admin else ''}key {key_id} ({name.strip()}); it is shown this once:", err=True)
    typer.echo(key)


@keys_app.command("list")
def list_keys() -> None:
    """Every key: id, name, admin, created, revoked (never the key itself)."""
    from api import keys
    from shared.db import migrate, session_scope

    migrate()
    table = Table("id", "name", "admin", "created", "revoked")
    with session_scope() as db:
        for row in keys.listed(db):
            table.add_row(row.id, escape(row.name), "yes" if row.admin else "", _ts(row.created_at),
                          _ts(row.revoked_at))
    console.print(table)


@keys_app.command("revoke")
def revoke(key_id: Annotated[str, typer.Argument(help="The key's id (from `speechq keys list`)")]) -> None:
    """Revoke a key at once: requests with it get 401. Its jobs stay (an admin key still sees them)."""
    from api import keys
    from shared.db import migrate, session_scope

    migrate()
    with session_scope() as db:
        row = keys.revoke(db, key_id)
        if row is None:
            typer.echo(f"speechq: no key {key_id}", err=True)
            raise typer.Exit(3)
        console.print(f"key {row.id} ({escape(row.name)}) revoked at {_ts(row.revoked_at)}", highlight=False)
