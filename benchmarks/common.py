"""What every benchmark report states about the machine it ran on."""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or what platform knows)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine_lines(packages: tuple[str, ...]) -> list[str]:
    """Markdown bullet lines: CPU and cores, RAM, Python and ``packages`` versions, OS."""
    ram_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = ", ".join(f"{p} {md.version(p)}" for p in packages)
    return [
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores",
        f"- RAM: {ram_gb:.1f} GiB",
        f"- Python {platform.python_version()}, {versions}",
        f"- OS: {platform.platform()}",
    ]
