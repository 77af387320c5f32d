"""Both images, built for real with podman from the committed Dockerfiles, and run.

``scripts/build-images.sh`` builds them (on a Debian-made base: Docker Hub is out of reach
here; podman's layer cache makes a rebuild of unchanged Dockerfiles quick). ``podman run`` does
not work in this sandbox, so what an image ships runs the way the issue found: ``podman
create`` + ``podman mount``, then ``chroot --userspec=UID:GID`` into the mounted root with the
image's own environment, user and working directory. The chroot shares the host's network, so
the processes inside reach the session's tracking server and answer on 127.0.0.1.

The chain, end to end: a small synthetic lake in the pipeline image's ``/data``; its
``matchmaking process`` and ``matchmaking train`` register a model on the session's tracking
server; the scoring image's entrypoint loads that version and answers ``/v1/rank``.

Run with ``make test-images`` (``pytest -m images``); ``make test`` leaves it out. Without
podman the build script installs it (apt-get), so the test fails rather than skips.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow.tracking import MlflowClient

from matchmaking.world.generate import generate_world

pytestmark = [pytest.mark.images, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "build-images.sh"
TAGS = {
    "scoring": os.environ.get("SCORING_IMAGE", "localhost/matchmaking-scoring:dev"),
    "pipeline": os.environ.get("PIPELINE_IMAGE", "localhost/matchmaking-pipeline:dev"),
}
# The issue's targets, which both images meet (docs/deployment.md, section 1), are the bounds.
MAX_MB = {"scoring": 600, "pipeline": 1200}
TARGET_MB = {"scoring": 600, "pipeline": 1200}
# What they weighed before the scoring image got its own dependency set (mlflow-skinny, no
# pandas/scikit-learn/Airflow stack) and the base its slimming, on the same Debian-made base:
# printed beside today's sizes.
BEFORE_MB = {"scoring": 1028, "pipeline": 1050}
# What the scoring service does not import, hence its image does not hold (pyproject.toml's
# `serving` group): mlflow's server and UI, the dataframe/training stack, Airflow.
NOT_IN_SCORING = {"mlflow", "pandas", "scikit-learn", "matplotlib", "apache-airflow", "s3fs"}
# Not in constraints.txt: the venv's own installer and the project itself.
UNPINNED = {"pip", "setuptools", "wheel", "matchmaking"}
BUILD_TOOLS = ("gcc", "cc", "c++", "g++", "cpp", "make", "ld", "as", "strip", "readelf", "objcopy")
START, DAYS = date(2026, 10, 1), 3


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lines: list[str]) -> dict[str, str]:
    """``name==version`` lines (comments, markers dropped) -> {normalized name: version}."""
    out: dict[str, str] = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[norm(name)] = version.split(";", 1)[0].strip()
    return out


def podman(*args: str, check: bool = True, timeout: float = 300) -> str:
    result = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


@dataclass
class Image:
    """One built image: its tag, size and config (user, env, workdir, entrypoint, cmd)."""

    name: str
    tag: str
    size_mb: float
    config: dict[str, Any]

    @contextlib.contextmanager
    def mounted(self) -> Iterator[Path]:
        """A fresh container of the image, its root filesystem mounted; removed afterwards."""
        ctr = podman("create", self.tag, "/bin/true").strip()
        try:
            yield Path(podman("mount", ctr).strip())
        finally:
            podman("umount", ctr, check=False)
            podman("rm", "--force", ctr, check=False)

    def command(self, root: Path, argv: list[str], env: dict[str, str] | None = None) -> list[str]:
        """``argv`` as the image's user, in its workdir, with its ENV (plus ``env``) only."""
        uid, gid, home = user_entry(root, self.config["User"])
        environ = dict(item.split("=", 1) for item in self.config.get("Env") or [])
        environ |= {"HOME": home, **(env or {})}
        return [
            "chroot",
            f"--userspec={uid}:{gid}",
            str(root),
            "/usr/bin/env",
            "-i",
            "-C",
            self.config.get("WorkingDir") or "/",
            *(f"{k}={v}" for k, v in environ.items()),
            *argv,
        ]

    def run(
        self, root: Path, argv: list[str], env: dict[str, str] | None = None, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(root, argv, env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def user_entry(root: Path, user: str) -> tuple[int, int, str]:
    """(uid, gid, home) of the image's USER, read from the image's own /etc/passwd."""
    for line in (root / "etc" / "passwd").read_text().splitlines():
        name, _, uid, gid, _, home, _ = line.split(":")
        if user in (name, uid):
            return int(uid), int(gid), home
    raise AssertionError(f"USER {user!r} has no /etc/passwd entry in the image")


@pytest.fixture(scope="module")
def images(request: pytest.FixtureRequest) -> dict[str, Image]:
    """Both images, built (or found up to date in podman's layer cache) by the script."""
    env = {**os.environ, "SCORING_IMAGE": TAGS["scoring"], "PIPELINE_IMAGE": TAGS["pipeline"]}
    start = time.monotonic()
    result = subprocess.run(
        ["nice", "-n", "10", str(SCRIPT)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=3 * 3600,
        check=False,
    )
    took = time.monotonic() - start
    report = [line for line in result.stdout.splitlines() if line.startswith(("==", "   "))]
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-60:])
        pytest.fail(f"scripts/build-images.sh exited {result.returncode}:\n{tail}")
    out: dict[str, Image] = {}
    for name, tag in TAGS.items():
        (info,) = json.loads(podman("image", "inspect", tag))
        out[name] = Image(name, tag, info["Size"] / 1e6, info["Config"])
    lines = [f"images built in {took:.0f} s (podman's layer cache reused where valid):"]
    lines += [
        f"  {i.tag}: {i.size_mb:.0f} MB (was {BEFORE_MB[i.name]} MB; target "
        f"{TARGET_MB[i.name]} MB, bound {MAX_MB[i.name]} MB)"
        for i in out.values()
    ]
    lines += [f"  {line.strip()}" for line in report if "distributions," in line]
    terminal = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if terminal is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            terminal.write_line("")
            for line in lines:
                terminal.write_line(line)
    return out


@pytest.mark.parametrize("name", sorted(TAGS))
def test_image_size_is_under_target(images: dict[str, Image], name: str) -> None:
    image = images[name]
    assert image.size_mb < MAX_MB[name], f"{image.tag}: {image.size_mb:.0f} MB"


@pytest.mark.parametrize("name", sorted(TAGS))
def test_image_runs_as_non_root(images: dict[str, Image], name: str) -> None:
    image = images[name]
    assert image.config.get("User"), "no USER: the image would run as root"
    with image.mounted() as root:
        uid, _, _ = user_entry(root, image.config["User"])
        assert uid != 0, f"USER {image.config['User']} is root"
        who = image.run(root, ["id", "-u"])
    assert who.returncode == 0 and who.stdout.strip() == str(uid), who.stderr


@pytest.mark.parametrize("name", sorted(TAGS))
def test_rootfs_holds_no_build_tools_or_caches(images: dict[str, Image], name: str) -> None:
    with images[name].mounted() as root:
        tools = [
            f"{d}/{t}"
            for d in ("usr/bin", "usr/local/bin", "opt/venv/bin")
            for t in BUILD_TOOLS
            if (root / d / t).exists()
        ]
        assert not tools, f"build tools in the runtime image: {tools}"
        caches = [
            str(p.relative_to(root))
            for pattern in ("root/.cache", "home/*/.cache", "opt/airflow/.cache", "tmp/*")
            for p in root.glob(pattern)
        ]
        caches += [str(p.relative_to(root)) for p in root.glob("var/cache/apt/archives/*.deb")]
        caches += [
            str(p.relative_to(root))
            for p in root.glob("var/lib/apt/lists/*")
            if p.name not in ("lock", "partial", "auxfiles")
        ]
        assert not caches, f"caches in the runtime image: {caches}"
        # The build stage's source tree stays in the build stage.
        assert not (root / "src").exists()
        if name == "pipeline":
            # Its policy (the Dockerfile's find ... -exec rm): no bytecode shipped.
            pyc = next(
                (p for base in ("opt/venv", "app") for p in (root / base).rglob("__pycache__")),
                None,
            )
            assert pyc is None, f"bytecode in the pipeline image: {pyc}"
        else:
            # Scoring keeps the bytecode of what the service imports, compiled at build time
            # (read-only root in the cluster), and no installer: nothing installs at run time.
            site = root / "opt/venv/lib/python3.11/site-packages"
            assert any(site.glob("mlflow/__pycache__/*.pyc"))
            assert any(site.glob("serving/__pycache__/app.*.pyc"))
            installers = [p.name for p in site.glob("*") if p.name in ("pip", "setuptools")]
            assert not installers, f"installers in the scoring image: {installers}"


@pytest.mark.parametrize("name", sorted(TAGS))
def test_installed_packages_match_constraints(images: dict[str, Image], name: str) -> None:
    image = images[name]
    listing = (
        "import importlib.metadata as m\n"
        "for d in m.distributions(): print(d.metadata['Name'] + '==' + d.version)\n"
    )
    with image.mounted() as root:
        result = image.run(root, ["python", "-c", listing])
    assert result.returncode == 0, result.stderr
    installed = pins(result.stdout.splitlines())
    constraints = pins((ROOT / "constraints.txt").read_text().splitlines())
    differ = {
        n: (v, constraints.get(n))
        for n, v in installed.items()
        if n not in UNPINNED and constraints.get(n) != v
    }
    assert not differ, f"{image.tag}: installed (image, constraints.txt): {differ}"
    wanted = {"lightgbm", "fastapi", "uvicorn", "lleaves", "matchmaking"}
    if name == "pipeline":
        wanted |= {"mlflow", "apache-airflow", "apache-airflow-providers-cncf-kubernetes", "boto3"}
    else:
        wanted |= {"mlflow-skinny", "pyarrow", "scipy"}
        unwanted = NOT_IN_SCORING & installed.keys()
        assert not unwanted, f"{image.tag} holds what the service never imports: {unwanted}"
    assert wanted <= installed.keys(), wanted - installed.keys()


@dataclass
class Trained:
    """What the pipeline image did: its --help, the process and train outputs, the model."""

    help: subprocess.CompletedProcess[str]
    process: subprocess.CompletedProcess[str]
    features_files: list[str]
    train: subprocess.CompletedProcess[str]
    model: str
    version: str
    prefix: str


@pytest.fixture(scope="module")
def trained(images: dict[str, Image], tracking_server: Any) -> Trained:
    """A small lake in the pipeline image's /data, processed and trained by the image itself,
    the model registered on the session's tracking server and put at alias ``production``."""
    image = images["pipeline"]
    prefix = f"img{uuid.uuid4().hex[:8]}"
    env = {"MLFLOW_TRACKING_URI": tracking_server.uri, "MATCHMAKING_MODEL_NAME_PREFIX": prefix}
    with image.mounted() as root:
        uid, gid, _ = user_entry(root, image.config["User"])
        lake = root / "data" / "lake"
        generate_world(
            cities=["jakarta"],
            start=START,
            days=DAYS,
            seed=11,
            out=lake,
            scale=0.002,
            bookings_per_day=300,
            progress=False,
        )
        for path in [lake, *lake.rglob("*")]:
            os.chown(path, uid, gid)
        shown = image.run(root, ["matchmaking", "--help"], timeout=300)
        end = date.fromordinal(START.toordinal() + DAYS - 1)
        processed = image.run(
            root,
            [
                "matchmaking",
                "process",
                "--city",
                "jakarta",
                "--start",
                str(START),
                "--end",
                str(end),
            ],
            env,
        )
        found = re.search(r"^features: (\S+)$", processed.stdout, re.M)
        run_id = re.search(r"^run_id: (\w+)$", processed.stdout, re.M)
        assert processed.returncode == 0 and found and run_id, processed.stdout + processed.stderr
        features = root / found.group(1).lstrip("/")
        files = sorted(p.name for p in features.iterdir()) if features.is_dir() else []
        training = image.run(
            root,
            [
                "matchmaking",
                "train",
                "--city",
                "jakarta",
                "--features",
                found.group(1),
                "--process-run-id",
                run_id.group(1),
                "--set",
                "valid_days=1",
                "--set",
                "num_boost_round=60",
            ],
            env,
        )
    uri = re.search(r"^model_uri: models:/([^/\s]+)/(\d+)$", training.stdout, re.M)
    assert training.returncode == 0 and uri, training.stdout + training.stderr
    model, version = uri.group(1), uri.group(2)
    # A first version goes straight to Production, as the demo does (no gate without a rival).
    client = MlflowClient(tracking_uri=tracking_server.uri, registry_uri=tracking_server.uri)
    client.set_registered_model_alias(model, "production", version)
    return Trained(shown, processed, files, training, model, version, prefix)


def test_pipeline_image_help(trained: Trained) -> None:
    assert trained.help.returncode == 0, trained.help.stderr
    for command in ("process", "train", "evaluate", "promote", "serve"):
        assert command in trained.help.stdout


def test_pipeline_image_processes_a_mounted_lake(trained: Trained) -> None:
    out = trained.process.stdout
    assert re.search(r"^rows: [1-9]\d* ", out, re.M), out
    assert "quarantined: 0" in out, out
    assert any(f.endswith(".parquet") for f in trained.features_files), trained.features_files


def test_pipeline_image_trains_and_registers(trained: Trained) -> None:
    assert trained.model == f"{trained.prefix}-jakarta"
    assert trained.version == "1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


RANK_BODY = {
    "booking": {
        "booking_id": "b-123",
        "city": "jakarta",
        "pickup": {"lat": -6.2000, "lng": 106.8166},
        "dropoff": {"lat": -6.2500, "lng": 106.8500},
        "requested_at": "2026-11-27T08:15:00+07:00",
    },
    "candidates": [
        {
            "driver_id": "d-1",
            "location": {"lat": -6.1950, "lng": 106.8200},
            "rating": 4.8,
            "home": {"lat": -6.3000, "lng": 106.9000},
            "eta_seconds": 240,
        },
        {
            "driver_id": "d-2",
            "location": {"lat": -6.2050, "lng": 106.8100},
            "rating": 4.5,
            "home": {"lat": -6.1500, "lng": 106.7500},
        },
    ],
}


def wait_for(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> httpx.Response:
    """GET ``url`` until it answers 200; fail with the service's log if it dies or times out."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the service exited {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            r = httpx.get(url, timeout=5)
            if r.status_code == 200:
                return r
            last = f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.5)
    pytest.fail(f"{url}: no 200 in {timeout:.0f} s (last: {last}):\n{log.read_text()[-4000:]}")


def test_scoring_entrypoint_serves_the_trained_model(
    images: dict[str, Image], trained: Trained, tracking_server: Any, tmp_path: Path
) -> None:
    image = images["scoring"]
    assert image.config["Entrypoint"] == ["python", "-m", "serving.main"]
    port = free_port()
    env = {
        "MATCHMAKING_SERVE_TRACKING_URI": tracking_server.uri,
        "MATCHMAKING_SERVE_MODEL_NAME_PREFIX": trained.prefix,
        "MATCHMAKING_SERVE_HOT_CITIES": "jakarta",
        "MATCHMAKING_SERVE_HOST": "127.0.0.1",
        "MATCHMAKING_SERVE_PORT": str(port),
    }
    log = tmp_path / "scoring.log"
    with image.mounted() as root, log.open("wb") as out:
        proc = subprocess.Popen(
            image.command(root, image.config["Entrypoint"], env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(f"{base}/healthz", proc, log, timeout=300)
            ready = wait_for(f"{base}/readyz", proc, log, timeout=300)
            r = httpx.post(f"{base}/v1/rank", json=RANK_BODY, timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
    assert ready.json()["status"] == "ok", ready.text
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model"], body["version"], body["fallback"]) == (
        trained.model,
        trained.version,
        False,
    ), body
    assert [c["rank"] for c in body["candidates"]] == [1, 2], body
    assert {c["driver_id"] for c in body["candidates"]} == {"d-1", "d-2"}
    scores = [c["score"] for c in body["candidates"]]
    assert scores == sorted(scores, reverse=True)
