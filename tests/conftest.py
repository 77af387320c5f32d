"""Session-wide test wiring.

* Every test gets its own MLflow store and data dir (``isolated_mlflow``, autouse).
* Integration tests share ONE real ``mlflow server`` per session (``tracking_server``);
  ``remote_tracking`` points a test at it. It is only started when a selected test needs it:
  spawned right after collection so that its boot overlaps the tests that run first, and
  waited for by the first test that asks for it (under xdist: started by that first test).
* The header and the summary say which backend that server uses (PostgreSQL, or an announced
  SQLite fallback).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

pytest.register_assert_rewrite("support")  # helpers' asserts explain themselves, as tests' do

from support.s3 import moto_s3, new_bucket  # noqa: E402
from support.tracking_server import TrackingServer, TrackingServerError, choose_backend  # noqa: E402

TESTS_DIR = Path(__file__).parent
INTEGRATION_DIR = TESTS_DIR / "integration"
# Where a test that ignores the isolated store would write, relative to the repo root.
LEAK_CANDIDATES = ("mlruns", "mlartifacts", "data")

_server_key = pytest.StashKey[TrackingServer]()
_preexisting_key = pytest.StashKey[set[str]]()


# -- hooks ------------------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    root = config.rootpath
    config.stash[_preexisting_key] = {name for name in LEAK_CANDIDATES if (root / name).exists()}


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Announce the integration backend up front (a quick PostgreSQL probe, no server)."""
    try:
        return [choose_backend().announcement]
    except TrackingServerError as exc:
        return [f"integration tests: ERROR: {exc}"]


@pytest.hookimpl(tryfirst=True)  # before -m deselects, so `-m "not integration"` sees the mark
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests under tests/integration/ (or using the server) as ``integration``."""
    for item in items:
        uses_server = "tracking_server" in getattr(item, "fixturenames", ())
        if uses_server or item.path.is_relative_to(INTEGRATION_DIR):
            item.add_marker(pytest.mark.integration)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Spawn the tracking server now (no waiting) if a selected test will need it."""
    config = session.config
    if config.option.collectonly or hasattr(config, "workerinput"):
        return  # nothing will run / xdist workers start theirs lazily, only where needed
    if not any("tracking_server" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    try:
        server = TrackingServer()
    except TrackingServerError:
        return  # the fixture raises the same error, in the tests that need the server
    try:
        server.start()
    except TrackingServerError:
        server.stop()
        return
    config.stash[_server_key] = server


def pytest_unconfigure(config: pytest.Config) -> None:
    """Last resort: stop a server whose fixture never ran (e.g. ``-x`` or Ctrl-C before it)."""
    server = config.stash.get(_server_key, None)
    if server is not None:
        server.stop()


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """Repeat which backend the server actually ran on, and flag writes into the repo."""
    server = config.stash.get(_server_key, None)
    if server is not None:
        if server.startup_seconds is None:
            startup = "not started"
        else:
            startup = (
                f"up in {server.startup_seconds:.1f} s, "
                f"tests waited {server.waited_seconds:.1f} s for it"
            )
        terminalreporter.write_sep(
            "-",
            f"{server.backend.announcement}; {startup}",
            yellow=server.backend.fallback,
            bold=server.backend.fallback,
        )
    root = config.rootpath
    leaked = [
        name
        for name in LEAK_CANDIDATES
        if name not in config.stash[_preexisting_key] and (root / name).exists()
    ]
    if leaked:
        terminalreporter.write_sep(
            "!",
            f"tests wrote into the repo: {', '.join(leaked)} (use tmp_path / MATCHMAKING_DATA_DIR"
            ", and an explicit artifact_location for experiments)",
            red=True,
            bold=True,
        )


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def isolated_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Point MLflow and the data dir at ``tmp_path``; yields the per-test tracking URI.

    Only environment variables are touched (cheap: no MLflow import, the SQLite file appears
    only if the test uses MLflow). Afterwards, if the test imported MLflow, its process-global
    state (active run, experiment, URIs set with ``mlflow.set_*``) is reset.
    """
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MATCHMAKING_DATA_DIR", str(tmp_path / "data"))
    for var in (
        "MLFLOW_REGISTRY_URI",
        "MLFLOW_EXPERIMENT_ID",
        "MLFLOW_EXPERIMENT_NAME",
        "MLFLOW_RUN_ID",
        "MATCHMAKING_TRACKING_URI",
        "MATCHMAKING_LAKE_URI",
        "MATCHMAKING_LAKE_STORAGE_OPTIONS",
    ):
        monkeypatch.delenv(var, raising=False)
    yield uri
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None:
        _reset_mlflow_globals(mlflow)


def _reset_mlflow_globals(mlflow: ModuleType) -> None:
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    # No public API clears the experiment chosen by mlflow.set_experiment(); without this the
    # next test would log into an experiment id of another test's store (mlflow's own
    # tests/conftest.py resets it the same way).
    mlflow.tracking.fluent._active_experiment_id = None


@pytest.fixture(scope="session")
def tracking_server(request: pytest.FixtureRequest) -> Iterator[TrackingServer]:
    """One real ``mlflow server`` for the whole session (PostgreSQL, or announced SQLite).

    Usually already booting (see ``pytest_collection_finish``); stopped, and its database
    dropped, at the end of the session, also after a failure or Ctrl-C.
    """
    server = request.config.stash.get(_server_key, None)
    if server is None:
        try:
            server = TrackingServer()
        except TrackingServerError as exc:
            problem = str(exc)  # failed outside the except block: no chained traceback
        else:
            problem = ""
        if problem:
            pytest.fail(problem, pytrace=False)
        request.config.stash[_server_key] = server
    with server:
        yield server


@pytest.fixture
def remote_tracking(tracking_server: TrackingServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point this test's MLflow (tracking and registry) at the session server; returns its URI."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server.uri)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    return tracking_server.uri


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A local S3 server (moto) for the lake and registry tests; AWS variables point at it."""
    with moto_s3() as endpoint:
        yield endpoint


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    """A fresh bucket on the session's S3 server; its ``s3://`` URI."""
    return new_bucket()
