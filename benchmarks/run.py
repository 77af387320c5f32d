"""Run the benchmarks in turn: ``python -m benchmarks.run [--only NAME]``.

Each benchmark is a module ``benchmarks.<name>`` with ``main(report: Path)``; its report goes
to ``benchmarks/reports/<name>.md``. A failing benchmark is reported and the others still run;
the exit status is non-zero if any failed. A benchmark whose module does not exist yet is
skipped (``--only`` on it fails).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
import traceback
from pathlib import Path

BENCHMARKS = (
    "world",
    "pipeline",
    "serving",
    "fleet",
    "dags",
    "report",
    "ope",
    "ipw",
    "dispatch",
    "pooled",
)
REPORTS = Path(__file__).parent / "reports"

logger = logging.getLogger("benchmarks.run")


def run_one(name: str, required: bool) -> bool:
    """Import ``benchmarks.<name>`` and run its ``main``; True on success (or an allowed skip)."""
    module_name = f"{__package__ or 'benchmarks'}.{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name and not required:
            logger.warning("%s: no module %s, skipped", name, module_name)
            return True
        logger.error("%s: cannot import %s:\n%s", name, module_name, traceback.format_exc())
        return False
    except Exception:
        logger.error("%s: cannot import %s:\n%s", name, module_name, traceback.format_exc())
        return False
    report = REPORTS / f"{name}.md"
    logger.info("%s: running, report -> %s", name, report)
    started = time.perf_counter()
    try:
        module.main(report)
    except Exception:
        logger.error("%s: failed:\n%s", name, traceback.format_exc())
        return False
    logger.info("%s: done in %.0f s", name, time.perf_counter() - started)
    return True


def main(argv: list[str] | None = None) -> int:
    """Run every benchmark (or ``--only NAME``); return the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=BENCHMARKS, help="run this benchmark alone")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    names = [args.only] if args.only else list(BENCHMARKS)
    failed = [name for name in names if not run_one(name, required=args.only is not None)]
    if failed:
        logger.error("failed: %s", ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
