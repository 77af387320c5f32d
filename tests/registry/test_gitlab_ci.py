"""The CI file: scripts/ci-tools.sh installs gitlab-ci-local, which validates and lists it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EXPECTED = {
    "lint": "lint",
    "test": "test",
    "build-scoring-image": "build",
    "build-pipeline-image": "build",
    "train": "train",
    "promote": "promote",
    "rollback": "promote",
    "deploy": "deploy",
}


@pytest.fixture(scope="module")
def gitlab_ci_local() -> Path:
    if shutil.which("npm") is None:
        pytest.fail("npm is not installed: scripts/ci-tools.sh needs it (apt-get install -y npm)")
    done = subprocess.run(
        [str(REPO / "scripts" / "ci-tools.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"ci-tools.sh failed:\n{done.stderr}"
    binary = Path(done.stdout.strip().splitlines()[-1])
    assert binary.is_file(), done.stdout
    return binary


def test_ci_file_validates_and_lists_the_stages_and_jobs(
    gitlab_ci_local: Path, tmp_path: Path
) -> None:
    # A scratch git checkout holding only the CI file: gitlab-ci-local writes its state there.
    shutil.copy(REPO / ".gitlab-ci.yml", tmp_path / ".gitlab-ci.yml")
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=tmp_path, check=True)
    env_path = f"{gitlab_ci_local.parent}:/usr/bin:/bin"
    done = subprocess.run(
        [str(gitlab_ci_local), "--list"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": env_path, "HOME": str(tmp_path)},
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "json schema validated" in output
    listed = {}
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] in EXPECTED:
            listed[parts[0]] = (parts[1], parts[2])
    assert {job: stage for job, (stage, _) in listed.items()} == EXPECTED
    manual = {job for job, (_, when) in listed.items() if when == "manual"}
    assert manual == {"train", "promote", "rollback", "deploy"}


def _run(gitlab_ci_local: Path, checkout: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(gitlab_ci_local), *args],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": f"{gitlab_ci_local.parent}:/usr/bin:/bin", "HOME": str(checkout)},
        check=False,
    )


def test_an_invalid_ci_file_is_rejected(gitlab_ci_local: Path, tmp_path: Path) -> None:
    (tmp_path / ".gitlab-ci.yml").write_text("lint:\n  stage: nowhere\n  script: [true]\n")
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=tmp_path, check=True)
    done = _run(gitlab_ci_local, tmp_path, "--list")
    assert done.returncode != 0
    # Rejected for the reason planted, not for anything else (a missing tool, a git error).
    assert re.search(r"stage:\s*nowhere not found for lint", done.stdout + done.stderr), (
        done.stdout + done.stderr
    )


def _job(config: dict[str, dict[str, object]], name: str) -> dict[str, object]:
    """A job with its ``extends`` chain merged in (GitLab's merge, one level of keys deep)."""
    job = dict(config[name])
    parent = job.pop("extends", None)
    return {**_job(config, str(parent)), **job} if parent else job


def test_promote_and_rollback_are_serialised_per_city() -> None:
    config = yaml.safe_load((REPO / ".gitlab-ci.yml").read_text())
    groups = {name: _job(config, name).get("resource_group") for name in ("promote", "rollback")}
    # One group for both jobs, named after the city the job acts on.
    assert groups == {
        "promote": "promotion-$PROMOTE_CITIES",
        "rollback": "promotion-$PROMOTE_CITIES",
    }
    for city in ("jakarta", "ho-chi-minh-city", "all"):
        key = str(groups["promote"]).replace("$PROMOTE_CITIES", city)
        assert re.fullmatch(r"[A-Za-z0-9_\-/${}. ]+", key), key  # GitLab's allowed characters


def test_a_registry_job_refuses_a_city_list(gitlab_ci_local: Path, tmp_path: Path) -> None:
    """A comma list would name one resource group for several cities: the job refuses it."""
    shutil.copy(REPO / ".gitlab-ci.yml", tmp_path / ".gitlab-ci.yml")
    git = ["git", "-c", "user.email=ci@test", "-c", "user.name=ci"]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=tmp_path, check=True)
    subprocess.run([*git, "add", ".gitlab-ci.yml"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "ci"], cwd=tmp_path, check=True)
    done = _run(
        gitlab_ci_local,
        tmp_path,
        "rollback",
        "--force-shell-executor",
        "--variable",
        "PROMOTE_CITIES=jakarta,bangkok",
    )
    output = done.stdout + done.stderr
    assert "PROMOTE_CITIES must be one city or 'all'" in output, output
    assert "= all ]" not in output  # the script itself never started
