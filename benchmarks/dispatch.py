"""Benchmark: `world dispatch` serving one simulated day of 1,600 bookings through the real
scoring service (issue 13: "a day of 1,600 bookings takes well under a minute").

A world is generated (3 days at 1,600 bookings), a model trained on it and put in Production
(local SQLite store), the scoring service started on a real uvicorn in a thread with the
decision log on and exploration in the city; then two more days are served, one with the rank
calls one at a time (``workers=1``, the baseline) and one pipelined (``workers=4``, the
default), in the same run. Needs the serving side of issue 13 (decision log, /v1/outcomes,
exploration). Run: ``.venv/bin/python -m benchmarks.dispatch`` (writes
benchmarks/reports/dispatch.md).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from datetime import date, timedelta
from pathlib import Path

from benchmarks.common import checks_table, machine_lines, write_report

logger = logging.getLogger("benchmarks.dispatch")

CITY = "jakarta"
BOOKINGS = 1_600
START = date(2026, 10, 1)
REPORT = Path(__file__).parent / "reports" / "dispatch.md"
TARGET_S = 30.0  # "well under a minute"


def _serve(settings: object) -> tuple[object, threading.Thread, str]:
    import uvicorn

    from serving.app import create_app
    from serving.settings import ServeSettings

    serve = ServeSettings(
        tracking_uri=settings.resolved_tracking_uri(),  # type: ignore[attr-defined]
        model_name_prefix=settings.model_name_prefix,  # type: ignore[attr-defined]
        hot_cities=[CITY],
        compile_forests=False,
        lake_uri=str(settings.lake_dir),  # type: ignore[attr-defined]
        exploration={CITY: 0.5},
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(serve), host="127.0.0.1", port=0, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{port}"


def main(report: Path = REPORT) -> None:
    from mlflow.tracking import MlflowClient

    from matchmaking.config import Settings
    from matchmaking.processing.step import build_dataset
    from matchmaking.registry.production import set_production
    from matchmaking.training.params import TrainParams
    from matchmaking.training.train import train
    from matchmaking.world.generate import generate_world
    from matchmaking.world.served import DispatchRequest, dispatch_day

    with tempfile.TemporaryDirectory(prefix="bench-dispatch-") as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        settings = Settings(data_dir=Path(tmp))
        generate_world([CITY], START, 3, 42, settings.lake_dir, 0.002, BOOKINGS, progress=False)
        window = (START + timedelta(days=1), START + timedelta(days=2))
        features = build_dataset(settings, CITY, *window, max_bad_share=0.05).dataset_dir
        version = train(
            settings,
            CITY,
            features,
            TrainParams.model_validate(
                {"objectives": ["binary"], "valid_days": 1, "num_boost_round": 60}
            ),
        ).version
        uri = settings.resolved_tracking_uri()
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        set_production(client, f"{settings.model_name_prefix}-{CITY}", version, "bench", "bench")
        server, thread, url = _serve(settings)
        rows = []
        try:
            for k, workers in enumerate((1, 4)):
                day = START + timedelta(days=3 + k)
                req = DispatchRequest(
                    CITY, day, url, settings.lake_dir, bookings_per_day=BOOKINGS, workers=workers
                )
                t0 = time.perf_counter()
                summary = dispatch_day(req)
                rows.append((workers, time.perf_counter() - t0, summary))
        finally:
            server.should_exit = True  # type: ignore[attr-defined]
            thread.join(timeout=60)
    (_, seq_s, seq), (_, pipe_s, pipe) = rows
    lines = [
        "# `world dispatch`: one served day of 1,600 bookings",
        "",
        "Command: `.venv/bin/python -m benchmarks.dispatch` (a real scoring service on uvicorn "
        "in the benchmark's process, decision log on, Plackett-Luce exploration T=0.5; model "
        "trained on 2 generated days). Wall seconds of `dispatch_day`: the day's simulation, "
        "every `/v1/rank` and `/v1/outcomes` call over HTTP, and writing the raw and truth "
        "partitions.",
        "",
        "## Machine",
        "",
        *machine_lines(("numpy", "pyarrow", "httpx", "uvicorn")),
        f"- load average at the end: {os.getloadavg()[0]:.1f}",
        "",
        "## Figures (same run)",
        "",
        "| rank calls in flight | bookings | rank calls | outcomes | seconds | rank calls / s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for workers, seconds, s in rows:
        lines.append(
            f"| {workers} | {s.bookings} | {s.rank_calls} | {s.outcomes_posted} | "
            f"{seconds:.1f} | {s.rank_calls / seconds:.0f} |"
        )
    lines += [
        "",
        f"Pipelined / sequential wall time: {pipe_s / seq_s:.2f}.",
        "",
        "## Checks",
        "",
        *checks_table(
            {
                f"1,600 bookings served in < {TARGET_S:.0f} s (pipelined)": pipe_s < TARGET_S,
                "pipelining is not slower than one call at a time": pipe_s <= seq_s * 1.1,
                "every booking with a free driver got one rank call": pipe.rank_calls
                == pipe.bookings - pipe.no_driver
                and seq.rank_calls == seq.bookings - seq.no_driver,
            }
        ),
    ]
    write_report(report, lines, logger)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
