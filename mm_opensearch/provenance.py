"""Where a model or a report came from: the command line and the commit of the code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

__all__ = ["command_line", "git_commit"]


def command_line() -> str:
    """The ``mm-opensearch`` command being run, as a user would retype it."""
    return " ".join(["mm-opensearch", *sys.argv[1:]])


def git_commit() -> str | None:
    """The commit of the code (None outside a git checkout)."""
    done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False,  # noqa: S603, S607
                          cwd=Path(__file__).resolve().parent)
    return (done.stdout.strip() or None) if done.returncode == 0 else None
