"""Subcommands of the ``ctflow`` CLI, one module each (see ctflow.cli)."""
