"""The launcher's backend choice and database hygiene (no server started: these are cheap)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from support.tracking_server import (
    BACKEND_ENV_VAR,
    DATABASE_PREFIX,
    POSTGRES_URL_ENV_VAR,
    TrackingServer,
    TrackingServerError,
    admin_execute,
    choose_backend,
    drop_orphaned_databases,
)

# Nothing listens on port 1; the connection is refused at once.
DEAD_POSTGRES = "postgresql://postgres@127.0.0.1:1/postgres"


def test_forced_sqlite_is_used_even_when_postgres_answers() -> None:
    choice = choose_backend({BACKEND_ENV_VAR: "sqlite"})
    assert choice.kind == "sqlite"
    assert not choice.fallback
    assert "forced" in choice.announcement


def test_unreachable_postgres_falls_back_to_sqlite_loudly() -> None:
    choice = choose_backend({POSTGRES_URL_ENV_VAR: DEAD_POSTGRES})
    assert choice.kind == "sqlite"
    assert choice.fallback
    assert choice.announcement.startswith("WARNING: integration tests: MLflow tracking server on")
    assert "no PostgreSQL answered at 127.0.0.1:1" in choice.announcement


def test_forced_postgres_that_does_not_answer_is_an_error() -> None:
    env = {BACKEND_ENV_VAR: "postgresql", POSTGRES_URL_ENV_VAR: DEAD_POSTGRES}
    with pytest.raises(TrackingServerError, match="no PostgreSQL answered"):
        choose_backend(env)


def test_unknown_backend_is_an_error() -> None:
    with pytest.raises(TrackingServerError, match="not a backend"):
        choose_backend({BACKEND_ENV_VAR: "mysql"})


def test_launcher_takes_the_forced_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BACKEND_ENV_VAR, "sqlite")
    server = TrackingServer()
    try:
        assert server.kind == "sqlite"
        assert server.database is None
    finally:
        server.stop()  # never started: only removes its temporary directory
    assert not server.workdir.exists()


def test_orphaned_databases_of_dead_sessions_are_dropped() -> None:
    choice = choose_backend()
    if choice.kind != "postgresql":
        pytest.skip(f"needs PostgreSQL: {choice.announcement}")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    orphan = f"{DATABASE_PREFIX}{int(dead.stdout)}_feedbeef"
    ours = f"{DATABASE_PREFIX}{os.getpid()}_feedbeef"
    for name in (orphan, ours):
        admin_execute(choice.postgres_url, "CREATE DATABASE {}", name)
    try:
        dropped = drop_orphaned_databases(choice.postgres_url)
        assert orphan in dropped
        assert ours not in dropped  # a live session's database is never touched
    finally:
        for name in (orphan, ours):
            admin_execute(choice.postgres_url, "DROP DATABASE IF EXISTS {} WITH (FORCE)", name)
