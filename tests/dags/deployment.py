"""A real Airflow deployment for one test: API server, scheduler and DAG processor processes.

LocalExecutor on a fresh PostgreSQL metadata database, the simple auth manager with one admin
user, every process in its own process group so that ``stop()`` reaches the task processes too.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

COMPONENTS = ("api-server", "scheduler", "dag-processor")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DeploymentError(RuntimeError):
    """The deployment did not come up or a call to it failed."""


class AirflowDeployment:
    """``airflow api-server``, ``scheduler`` and ``dag-processor`` on ``sql_alchemy_conn``."""

    def __init__(
        self, home: Path, dags_folder: Path, sql_alchemy_conn: str, extra_env: dict[str, str]
    ) -> None:
        self.home = home
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.password = secrets.token_urlsafe(12)
        home.mkdir(parents=True, exist_ok=True)
        passwords = home / "passwords.json"
        passwords.write_text(json.dumps({"admin": self.password}))
        base = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AIRFLOW", "PYTEST", "MLFLOW_"))
        }
        self.env = {
            **base,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_alchemy_conn,
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            **extra_env,
        }
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._token: str | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> AirflowDeployment:
        try:
            self.migrate()
            self.start()
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

    def _airflow(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "airflow", *args]

    def migrate(self) -> None:
        out = subprocess.run(
            self._airflow("db", "migrate"),
            env=self.env,
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if out.returncode != 0:
            raise DeploymentError(f"airflow db migrate failed:\n{out.stderr[-4000:]}")

    def start(self) -> None:
        for component in COMPONENTS:
            args = ["api-server", "--host", "127.0.0.1", "--port", str(self.port)]
            cmd = self._airflow(*(args if component == "api-server" else [component]))
            with (self.home / f"{component}.log").open("ab") as log:
                self._procs[component] = subprocess.Popen(
                    cmd,
                    env=self.env,
                    cwd=self.home,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )

    def stop(self) -> None:
        """SIGTERM every process group, then SIGKILL what is left."""
        for proc in self._procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self._procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self._procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self._procs.clear()

    def alive(self) -> None:
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                raise DeploymentError(
                    f"airflow {name} exited {proc.returncode}:\n{self.logs(name)}"
                )

    def logs(self, component: str, lines: int = 40) -> str:
        path = self.home / f"{component}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    # -- REST API -----------------------------------------------------------------------------

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One call to the API server (JSON in and out, the JWT once logged in)."""
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.url}{path}", data, headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise DeploymentError(f"{method} {path}: {exc.code} {exc.read()[:500]!r}") from exc

    def wait_for(self, what: str, probe: Any, timeout: float) -> Any:
        """Call ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            self.alive()
            try:
                value = probe()
            except (DeploymentError, urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                last, value = exc, None
            if value:
                return value
            time.sleep(1)
        logs = "\n".join(f"--- {c}\n{self.logs(c)}" for c in COMPONENTS)
        raise DeploymentError(
            f"timed out after {timeout:.0f} s waiting for {what} ({last})\n{logs}"
        )

    def login(self, timeout: float = 90) -> None:
        """Get a JWT from the simple auth manager's token endpoint."""

        def token() -> str:
            body = {"username": "admin", "password": self.password}
            return str(self.request("POST", "/auth/token", body)["access_token"])

        self._token = self.wait_for("the API server's token endpoint", token, timeout)
