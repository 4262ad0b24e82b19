"""Killing a subprocess at a chosen point, for the resume tests."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable

import pytest


def sigkill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float, message: str) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds; fail with ``message`` if it does not within
    ``timeout`` seconds or the process ends first."""
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None:
            if ready():
                return
            time.sleep(0.05)
        pytest.fail(message)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
