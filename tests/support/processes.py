"""Helpers for tests that start a real server process and wait for it over HTTP."""

from __future__ import annotations

import socket
import subprocess
import time

import httpx
import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_200(
    proc: subprocess.Popen[str], url: str, timeout_s: float, poll_s: float = 0.2
) -> None:
    """Wait until ``url`` answers 200; fail the test if ``proc`` exits first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(
                f"matchmaking serve exited {proc.returncode} before answering {url}:\n{err}"
            )
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(poll_s)
    pytest.fail(f"{url} did not answer 200 within {timeout_s:.0f} s")
