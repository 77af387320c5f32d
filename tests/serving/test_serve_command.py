"""`matchmaking serve` takes its settings from MATCHMAKING_SERVE_*, like every other way of
starting the service: a real process, a real uvicorn, a real socket."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from support.processes import free_port, wait_for_200

pytestmark = pytest.mark.slow

MATCHMAKING = Path(sys.executable).parent / "matchmaking"


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
    port = free_port()
    proc = _serve([], port, tmp_path)
    try:
        wait_for_200(proc, f"http://127.0.0.1:{port}/healthz", timeout_s=120.0)
    finally:
        _stop(proc)


def test_the_port_option_overrides_the_environment(tmp_path: Path) -> None:
    env_port, option_port = free_port(), free_port()
    proc = _serve(["--port", str(option_port)], env_port, tmp_path)
    try:
        wait_for_200(proc, f"http://127.0.0.1:{option_port}/healthz", timeout_s=120.0)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{env_port}/healthz", timeout=2.0)
    finally:
        _stop(proc)


def _serve_once(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``matchmaking serve`` run to its end: for settings that must stop it before serving."""
    return subprocess.run(
        [str(MATCHMAKING), "serve"], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_invalid_port_setting_is_a_config_error_naming_the_variable(tmp_path: Path) -> None:
    env = {**os.environ, "MATCHMAKING_SERVE_PORT": "not-a-port"}
    done = _serve_once(env, tmp_path)
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
    done = _serve_once(env, tmp_path)
    assert done.returncode == 2, done.stderr
    assert "names 3 cities but MATCHMAKING_SERVE_MAX_MODELS is 2" in done.stderr
    assert "at least 3" in done.stderr and "Traceback" not in done.stderr
