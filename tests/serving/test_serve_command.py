"""`matchmaking serve` takes its settings from MATCHMAKING_SERVE_*, like every other way of
starting the service: a real process, a real uvicorn, a real socket."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

MATCHMAKING = Path(sys.executable).parent / "matchmaking"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(proc: subprocess.Popen[str], url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"matchmaking serve exited {proc.returncode} before answering:\n{err}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} did not answer within {timeout_s:.0f} s")


def _serve(args: list[str], env_port: int, cwd: Path) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "MATCHMAKING_SERVE_HOST": "127.0.0.1",
        "MATCHMAKING_SERVE_PORT": str(env_port),
        "MATCHMAKING_SERVE_COMPILE_FORESTS": "false",
    }
    env.pop("MATCHMAKING_SERVE_HOT_CITIES", None)
    return subprocess.Popen(
        [str(MATCHMAKING), "serve", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def test_serve_binds_the_host_and_port_of_the_environment(tmp_path: Path) -> None:
    port = _free_port()
    proc = _serve([], port, tmp_path)
    try:
        _wait_healthy(proc, f"http://127.0.0.1:{port}/healthz")
    finally:
        _stop(proc)


def test_the_port_option_overrides_the_environment(tmp_path: Path) -> None:
    env_port, option_port = _free_port(), _free_port()
    proc = _serve(["--port", str(option_port)], env_port, tmp_path)
    try:
        _wait_healthy(proc, f"http://127.0.0.1:{option_port}/healthz")
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{env_port}/healthz", timeout=2.0)
    finally:
        _stop(proc)


def test_invalid_port_setting_is_a_config_error_naming_the_variable(tmp_path: Path) -> None:
    env = {**os.environ, "MATCHMAKING_SERVE_PORT": "not-a-port"}
    done = subprocess.run(
        [str(MATCHMAKING), "serve"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "MATCHMAKING_SERVE_" in done.stderr
    assert "port" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_hot_set_larger_than_the_cache_is_refused_at_startup(tmp_path: Path) -> None:
    """Never an endless load-evict loop with readiness that never passes: the process stops
    before serving, exit 2 (bad config), saying what to raise."""
    env = {
        **os.environ,
        "MATCHMAKING_SERVE_HOT_CITIES": "jakarta,bangkok,ho-chi-minh-city",
        "MATCHMAKING_SERVE_MAX_MODELS": "2",
    }
    done = subprocess.run(
        [str(MATCHMAKING), "serve"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "names 3 cities but MATCHMAKING_SERVE_MAX_MODELS is 2" in done.stderr
    assert "at least 3" in done.stderr and "Traceback" not in done.stderr
