"""A real Airflow deployment for one test: API server, scheduler and DAG processor processes.

LocalExecutor on a fresh PostgreSQL metadata database, the simple auth manager with one admin
user, every process in its own process group so that ``stop()`` reaches the task processes too.
With ``workers`` it runs CeleryExecutor instead: Redis as broker (``broker_url``), the metadata
database as Celery's result backend (extended results: each task's worker is recorded), and
one ``airflow celery worker`` process per entry, listening on its queues.
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
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from support.dagworld import DAGS_DIR, create_database, drop_database

COMPONENTS = ("api-server", "scheduler", "dag-processor")
FINISHED = ("success", "failed")
DAG_IDS = ("matchmaking_data", "matchmaking_train")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DeploymentError(RuntimeError):
    """The deployment did not come up or a call to it failed."""


class AirflowDeployment:
    """``airflow api-server``, ``scheduler`` and ``dag-processor`` on ``sql_alchemy_conn``."""

    def __init__(
        self,
        home: Path,
        dags_folder: Path,
        sql_alchemy_conn: str,
        extra_env: dict[str, str],
        *,
        workers: dict[str, list[str]] | None = None,
        broker_url: str | None = None,
    ) -> None:
        """``workers``: Celery worker name -> the queues it listens on (CeleryExecutor)."""
        self.home = home
        self.workers = dict(workers or {})
        if self.workers and not broker_url:
            raise ValueError("a CeleryExecutor deployment needs a broker_url")
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
            **(self._celery_env(sql_alchemy_conn, broker_url) if self.workers else {}),
            **extra_env,
        }
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._token: str | None = None

    @staticmethod
    def _celery_env(sql_alchemy_conn: str, broker_url: str | None) -> dict[str, str]:
        backend = "db+" + sql_alchemy_conn  # with its driver: SQLAlchemy 2.1's default is psycopg 3
        return {
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__CELERY__BROKER_URL": str(broker_url),
            "AIRFLOW__CELERY__RESULT_BACKEND": backend,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
            # Record each task's worker (celery_taskmeta.worker) in the result backend.
            "AIRFLOW__CELERY__EXTRA_CELERY_CONFIG": json.dumps({"result_extended": True}),
        }

    @property
    def components(self) -> tuple[str, ...]:
        return (*COMPONENTS, *self.workers)

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

    def _command(self, component: str) -> tuple[list[str], dict[str, str]]:
        if component == "api-server":
            return self._airflow("api-server", "--host", "127.0.0.1", "--port", str(self.port)), {}
        if component in self.workers:
            queues = ",".join(self.workers[component])
            cmd = self._airflow(
                "celery", "worker", "--queues", queues, "--concurrency", "2",
                "--celery-hostname", f"{component}@%h",
            )  # fmt: skip
            # Each worker serves its task logs on a port of its own.
            return cmd, {"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port())}
        return self._airflow(component), {}

    def start(self) -> None:
        for component in self.components:
            cmd, env = self._command(component)
            with (self.home / f"{component}.log").open("ab") as log:
                self._procs[component] = subprocess.Popen(
                    cmd,
                    env={**self.env, **env},
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
        logs = "\n".join(f"--- {c}\n{self.logs(c)}" for c in self.components)
        raise DeploymentError(
            f"timed out after {timeout:.0f} s waiting for {what} ({last})\n{logs}"
        )

    def login(self, timeout: float = 90) -> None:
        """Get a JWT from the simple auth manager's token endpoint."""

        def token() -> str:
            body = {"username": "admin", "password": self.password}
            return str(self.request("POST", "/auth/token", body)["access_token"])

        self._token = self.wait_for("the API server's token endpoint", token, timeout)

    # -- DAG runs -----------------------------------------------------------------------------

    def wait_for_dags(self, dag_ids: tuple[str, ...], timeout: float = 120) -> None:
        """Until the DAG processor has registered every DAG, unpaused."""
        self.wait_for(
            f"the DAG processor to register {', '.join(dag_ids)}",
            lambda: all(
                self.request("GET", f"/api/v2/dags/{d}")["is_paused"] is False for d in dag_ids
            ),
            timeout,
        )

    def trigger(self, dag_id: str, logical_date: str) -> str:
        """Trigger a run over REST; returns its run id."""
        body = {"logical_date": logical_date}
        return str(self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)["dag_run_id"])

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float) -> dict[str, Any]:
        """The run, once it has finished (success or failed)."""

        def finished() -> dict[str, Any] | None:
            run = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
            return dict(run) if run["state"] in FINISHED else None

        return dict(self.wait_for(f"{dag_id} {run_id}", finished, timeout))

    def wait_for_runs(self, dag_id: str, count: int, timeout: float) -> list[dict[str, Any]]:
        """The DAG's runs, once ``count`` of them have finished."""

        def finished() -> list[dict[str, Any]] | None:
            runs = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns")["dag_runs"]
            done = [dict(r) for r in runs if r["state"] in FINISHED]
            return done if len(done) >= count else None

        return list(self.wait_for(f"{count} finished {dag_id} runs", finished, timeout))

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances"
        return list(self.request("GET", path)["task_instances"])


@contextlib.contextmanager
def pipeline_deployment(
    tmp_path: Path,
    pipeline: dict[str, Any],
    tracking_uri: str,
    *,
    workers: dict[str, list[str]] | None = None,
    broker_url: str | None = None,
) -> Iterator[tuple[AirflowDeployment, str]]:
    """A deployment of ``dags/`` on ``pipeline`` (a pipeline config) with a fresh metadata
    database, logged in, both DAGs registered; yields it and the model-name prefix.

    The config has no cron: the only data runs are those the test triggers.
    """
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({**pipeline, "schedule": None}))
    prefix = f"deploy-{secrets.token_hex(4)}"
    name, url = create_database("afdeploy")
    extra_env = {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MATCHMAKING_PIPELINE_CONFIG": str(config),
        "MATCHMAKING_MODEL_NAME_PREFIX": prefix,
        "MATCHMAKING_EXPERIMENT_PREFIX": prefix,
    }
    try:
        with AirflowDeployment(
            tmp_path / "airflow", DAGS_DIR, url, extra_env, workers=workers, broker_url=broker_url
        ) as airflow:
            airflow.login()
            airflow.wait_for_dags(DAG_IDS)
            yield airflow, prefix
    finally:
        drop_database(name)


RUN_TIMEOUT_S = 900.0  # a bound on a loaded shared machine (load 20+ seen), not a timing


def registered_versions(tracking_uri: str, prefix: str, city: str) -> list[str]:
    """The versions registered under ``<prefix>-<city>``, sorted."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    return sorted(mv.version for mv in client.search_model_versions(f"name='{prefix}-{city}'"))


def training_runs(airflow: AirflowDeployment, cities: list[str]) -> dict[str, dict[str, Any]]:
    """One asset-triggered training run per city, once all have finished, by partition key."""
    runs = airflow.wait_for_runs("matchmaking_train", len(cities), RUN_TIMEOUT_S)
    by_city = {r["partition_key"]: r for r in runs}
    assert sorted(by_city) == sorted(cities), runs
    assert len(runs) == len(cities), runs  # one run per city, no more
    for run in runs:
        assert run["run_type"] == "asset_triggered"
    return by_city


def unsuccessful(tis: list[dict[str, Any]]) -> list[tuple[str, str, str, int]]:
    """(task, label, state, try) of the task instances that did not succeed."""
    return [
        (t["task_id"], t["rendered_map_index"], t["state"], t["try_number"])
        for t in tis
        if t["state"] != "success"
    ]
