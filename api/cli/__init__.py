"""The `speechq` command: run the stack, submit work, read results, manage models."""

from api.cli import calls, export, jobs, keys, listing, models, stack  # noqa: F401 - each module registers its commands
from api.cli.app import app

__all__ = ["app"]
