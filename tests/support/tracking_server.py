"""A real ``mlflow server`` for tests: PostgreSQL backend when one answers, SQLite otherwise.

Usage::

    with TrackingServer() as server:  # picks the backend with choose_backend()
        mlflow.set_tracking_uri(server.uri)

The server runs in its own process group with ``--serve-artifacts`` (artifacts go through the
``mlflow-artifacts:`` proxy into a temporary directory). On PostgreSQL a fresh database
``mm_test_<pid>_<hex>`` is created for it and dropped (``WITH (FORCE)``) once it has stopped.

Environment:
    MATCHMAKING_TEST_BACKEND: ``postgresql`` or ``sqlite`` forces a backend; a forced
        PostgreSQL that does not answer is an error, never a silent fallback.
    MATCHMAKING_TEST_POSTGRES_URL: the admin connection used to create and drop the test
        databases (default ``postgresql://postgres@127.0.0.1:5432/postgres``).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

BACKEND_ENV_VAR = "MATCHMAKING_TEST_BACKEND"
POSTGRES_URL_ENV_VAR = "MATCHMAKING_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DATABASE_PREFIX = "mm_test_"

Kind = Literal["postgresql", "sqlite"]


class TrackingServerError(RuntimeError):
    """The test tracking server could not be provisioned, started or reached."""


@dataclass(frozen=True)
class BackendChoice:
    """Which backend store the server gets, and why (for the terminal announcement)."""

    kind: Kind
    reason: str
    postgres_url: str
    fallback: bool = False

    @property
    def announcement(self) -> str:
        """One line for the pytest header and summary."""
        name = "PostgreSQL" if self.kind == "postgresql" else "SQLite"
        prefix = "WARNING: " if self.fallback else ""
        return f"{prefix}integration tests: MLflow tracking server on {name} ({self.reason})"


def postgres_admin_url(env: Mapping[str, str] = os.environ) -> str:
    """The admin URL used to create and drop the per-session test databases."""
    return env.get(POSTGRES_URL_ENV_VAR) or DEFAULT_POSTGRES_URL


def _host_port(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}"


def probe_postgres(url: str, timeout_s: int = 2) -> str | None:
    """Try one connection; returns ``None`` when PostgreSQL answers, else the reason it did not."""
    try:
        import psycopg2
    except ImportError as exc:  # pragma: no cover - psycopg2-binary is a dependency
        return f"psycopg2 is not importable: {exc}"
    try:
        conn = psycopg2.connect(url, connect_timeout=timeout_s)
    except psycopg2.Error as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    conn.close()
    return None


def choose_backend(env: Mapping[str, str] = os.environ) -> BackendChoice:
    """PostgreSQL if it answers (or is forced), else SQLite, flagged as a fallback.

    Raises:
        TrackingServerError: the env var names an unknown backend, or forces PostgreSQL and
            none answers.
    """
    url = postgres_admin_url(env)
    where = _host_port(url)
    forced = env.get(BACKEND_ENV_VAR, "").strip().lower()
    if forced == "sqlite":
        return BackendChoice("sqlite", f"forced by {BACKEND_ENV_VAR}=sqlite", url)
    if forced not in ("", "postgresql"):
        raise TrackingServerError(
            f"{BACKEND_ENV_VAR}={forced!r} is not a backend; use 'postgresql' or 'sqlite'"
        )
    problem = probe_postgres(url)
    if problem is None:
        how = f"forced by {BACKEND_ENV_VAR}" if forced else "answered"
        return BackendChoice("postgresql", f"{where}, {how}", url)
    if forced:
        raise TrackingServerError(
            f"{BACKEND_ENV_VAR}=postgresql but no PostgreSQL answered at {where}: {problem}. "
            f"Start PostgreSQL, point {POSTGRES_URL_ENV_VAR} at one, or unset {BACKEND_ENV_VAR}."
        )
    return BackendChoice(
        "sqlite", f"no PostgreSQL answered at {where}: {problem}", url, fallback=True
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def admin_execute(admin_url: str, statement: str, database: str) -> None:
    """Run ``statement`` (with ``{}`` for the quoted database name) outside a transaction."""
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(admin_url, connect_timeout=5)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql.SQL(statement).format(sql.Identifier(database)))
    finally:
        conn.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def drop_orphaned_databases(admin_url: str) -> list[str]:
    """Drop ``mm_test_<pid>_*`` databases whose test process is gone (a killed session).

    Databases of live processes (concurrent sessions) are left alone. Returns the dropped names.
    """
    import psycopg2

    conn = psycopg2.connect(admin_url, connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s",
                (DATABASE_PREFIX.replace("_", r"\_") + "%",),
            )
            names = [row[0] for row in cur.fetchall()]
    finally:
        conn.close()
    orphans = []
    for name in names:
        pid = name.removeprefix(DATABASE_PREFIX).split("_", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            admin_execute(admin_url, "DROP DATABASE IF EXISTS {} WITH (FORCE)", name)
            orphans.append(name)
    return orphans


def _parent_death_signal() -> Callable[[], None] | None:
    """Linux: a ``preexec_fn`` making the kernel SIGTERM the server when the test process dies
    without cleaning up (SIGKILL, a CI timeout). Resolved in the parent: the child only calls.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1

    def preexec() -> None:  # pragma: no cover - runs in the child, between fork and exec
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return preexec


class TrackingServer:
    """A ``mlflow server`` subprocess on a free 127.0.0.1 port; use it as a context manager.

    Attributes:
        uri: ``http://127.0.0.1:<port>``, the tracking URI to give clients.
        kind: ``"postgresql"`` or ``"sqlite"``.
        backend_uri: the ``--backend-store-uri`` the server was given.
        database_url: a libpq URL of the server's PostgreSQL database (``None`` on SQLite).
        sqlite_path: the SQLite file (``None`` on PostgreSQL).
        artifacts_dir: the ``--artifacts-destination`` directory.
        log_path: the server's combined stdout/stderr.
        startup_seconds: from spawning the process to the first healthy answer.
        waited_seconds: how long ``wait_until_ready`` blocked (less when started early).
    """

    def __init__(
        self,
        backend: BackendChoice | None = None,
        *,
        startup_timeout_s: float = 90.0,
        workers: int = 1,
    ) -> None:
        self.backend = backend or choose_backend()
        self.kind: Kind = self.backend.kind
        self.startup_timeout_s = startup_timeout_s
        self.workers = workers
        self.workdir = Path(tempfile.mkdtemp(prefix="mm-tracking-"))
        self.artifacts_dir = self.workdir / "artifacts"
        self.log_path = self.workdir / "server.log"
        self.database: str | None = None
        self.database_url: str | None = None
        self.sqlite_path: Path | None = None
        self.backend_uri = ""
        self.port = 0
        self.uri = ""
        self.startup_seconds: float | None = None
        self.waited_seconds = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._spawned_at = 0.0
        self._stopped = False

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> TrackingServer:
        try:
            self.start()
            self.wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Provision the backend store and spawn the server; returns without waiting."""
        if self._proc is not None:
            return
        atexit.register(self.stop)  # last resort if the owner never calls stop()
        if self.kind == "postgresql":
            self._create_database()
        else:
            self.sqlite_path = self.workdir / "mlflow.db"
            self.backend_uri = f"sqlite:///{self.sqlite_path}"
        self._spawn()

    def wait_until_ready(self) -> None:
        """Block until ``GET /health`` answers 200.

        Raises:
            TrackingServerError: the process exited or did not answer in time (log attached).
        """
        if self._proc is None:
            raise TrackingServerError("TrackingServer.start() was not called")
        if self.startup_seconds is not None:
            return
        began = time.monotonic()
        deadline = self._spawned_at + self.startup_timeout_s
        respawns = 0
        while True:
            code = self._proc.poll()
            if code is not None:
                # The free port can be taken between probing and binding: try another one.
                if respawns < 2 and "address already in use" in self.log_tail().lower():
                    respawns += 1
                    self._spawn()
                    deadline = self._spawned_at + self.startup_timeout_s
                    continue
                raise TrackingServerError(
                    f"mlflow server exited with code {code} before answering /health.\n"
                    f"--- {self.log_path} ---\n{self.log_tail()}"
                )
            if self._healthy():
                now = time.monotonic()
                self.startup_seconds = now - self._spawned_at
                self.waited_seconds = now - began
                return
            if time.monotonic() > deadline:
                raise TrackingServerError(
                    f"mlflow server did not answer {self.uri}/health within "
                    f"{self.startup_timeout_s:.0f} s.\n--- {self.log_path} ---\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop the process group (TERM, then KILL), drop the database, remove the workdir."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        try:
            self._terminate()
        finally:  # a Ctrl-C while waiting for the process must not leak the database
            try:
                if self.database is not None:
                    admin_execute(
                        self.backend.postgres_url,
                        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                        self.database,
                    )
            finally:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def kill(self) -> None:
        """Stop the server abruptly (SIGKILL to its process group), as a crash would.

        The backend store and the artifacts stay: ``restart()`` serves the same runs again.
        """
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)

    def restart(self) -> None:
        """Start the server again on the same backend store, on the same port when it is free
        (else another: read ``uri`` again), and wait for ``/health``."""
        self.kill()
        self.startup_seconds = None
        self._spawn(port=self.port)
        self.wait_until_ready()

    # -- helpers -----------------------------------------------------------------------------

    def log_tail(self, max_lines: int = 60) -> str:
        """The last lines of the server log (empty when there is none yet)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-max_lines:])

    def _create_database(self) -> None:
        name = f"{DATABASE_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
        try:
            drop_orphaned_databases(self.backend.postgres_url)
            admin_execute(self.backend.postgres_url, "CREATE DATABASE {}", name)
        except Exception as exc:
            raise TrackingServerError(
                f"could not create database {name} via {_host_port(self.backend.postgres_url)}: "
                f"{exc}"
            ) from exc
        self.database = name
        parts = urlsplit(self.backend.postgres_url)
        self.database_url = urlunsplit(parts._replace(path=f"/{name}"))
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the project ships psycopg2.
        self.backend_uri = urlunsplit(parts._replace(scheme="postgresql+psycopg2", path=f"/{name}"))

    def _spawn(self, port: int | None = None) -> None:
        self.port = port or _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            self.backend_uri,
            "--serve-artifacts",
            "--artifacts-destination",
            str(self.artifacts_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        # The job runner (GenAI scorers) spawns a handful of huey consumers: not needed here.
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                cwd=self.workdir,  # anything the server writes relative lands in the workdir
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stop() reaches uvicorn's children
                preexec_fn=_parent_death_signal(),
            )
        self._spawned_at = time.monotonic()

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def _terminate(self, grace_s: float = 10.0) -> None:
        proc = self._proc
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the leader's pid is the group id
        try:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace_s)
        finally:
            # Sweep what is left of the group (workers that outlived the leader, a hung
            # server, or a Ctrl-C that cut the grace period short).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
