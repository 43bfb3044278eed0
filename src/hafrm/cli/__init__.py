"""The `hafrm` command: train, eval, score, serve, sample, report (main)."""

from hafrm.cli.main import main

__all__ = ["main"]
