"""What every benchmark report states about the machine it ran on, and how reports are written."""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import logging
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


def checks_table(checks: dict[str, bool]) -> list[str]:
    """A report's pass/FAIL table, one row per target."""
    return [
        "| check | result |",
        "| --- | --- |",
        *[f"| {k} | {'pass' if v else 'FAIL'} |" for k, v in checks.items()],
        "",
    ]


def write_report(report: Path, lines: list[str], logger: logging.Logger) -> None:
    """Write the report's lines (creating its folder) and log where, with the text."""
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines))
    logger.info("report written to %s\n%s", report, "\n".join(lines))
