"""The CI file: scripts/ci-tools.sh installs gitlab-ci-local, which validates and lists it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

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


def test_an_invalid_ci_file_is_rejected(gitlab_ci_local: Path, tmp_path: Path) -> None:
    (tmp_path / ".gitlab-ci.yml").write_text("lint:\n  stage: nowhere\n  script: [true]\n")
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=tmp_path, check=True)
    done = subprocess.run(
        [str(gitlab_ci_local), "--list"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": f"{gitlab_ci_local.parent}:/usr/bin:/bin", "HOME": str(tmp_path)},
        check=False,
    )
    assert done.returncode != 0
