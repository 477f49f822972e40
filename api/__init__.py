"""The thin HTTP submission API and the `speechq` command line."""
