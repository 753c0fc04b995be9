"""Processes the orchestration starts in their own session, and how they are stopped."""

from __future__ import annotations

import contextlib
import os
import signal


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send `sig` to the process group led by `pid` (a process started with `start_new_session=True`): the
    run and anything it started. A group that has already gone is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
