"""Progress of the long steps: shown on a terminal or with --progress, never with
--no-progress or when stderr is a pipe; and the demo prints each evaluation table once."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from matchmaking.progress import Progress, progress_wanted
from matchmaking.world.generate import generate_world

PROCESS_STEPS = (
    "opening the MLflow run",
    "reading 4 daily partitions",
    "validating",
    "building features",
    "writing",
)
TRAIN_STEPS = ("reading features", "fitting binary", "logging the binary model", "registering")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_cli_rule_flag_first_else_whether_stderr_is_a_terminal() -> None:
    assert progress_wanted(None, _Terminal()) is True
    assert progress_wanted(None, io.StringIO()) is False
    assert progress_wanted(True, io.StringIO()) is True
    assert progress_wanted(False, _Terminal()) is False


def test_steps_and_rounds_print_only_when_enabled() -> None:
    import lightgbm as lgb
    import numpy as np

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 3)), rng.integers(0, 2, 200)
    for enabled in (True, False):
        out = io.StringIO()
        progress = Progress(enabled, "train x", stream=out)
        progress.step("fitting")
        rounds = progress.rounds("fitting binary", 7)
        lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(x, y), 7, callbacks=[rounds])
        rounds.close()
        progress.done()
        text = out.getvalue()
        if enabled:
            assert "] train x: fitting\n" in text
            assert "train x: fitting binary" in text and "7/7" in text
            assert text.rstrip().endswith("train x: done")
        else:
            assert text == ""


# ---- the real commands, in processes of their own ----------------------------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A 4-day lake and a SQLite store shared by the module's command runs."""
    root = tmp_path_factory.mktemp("progress")
    generate_world(
        cities=["jakarta"],
        start=date(2026, 8, 1),
        days=4,
        seed=5,
        out=root / "data" / "lake",
        scale=0.002,
        bookings_per_day=150,
        progress=False,
    )
    out = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MATCHMAKING_"))}
    return {
        **out,
        "MATCHMAKING_DATA_DIR": str(root / "data"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "MATCHMAKING_LOG_LEVEL": "WARNING",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }


def run_cli(env: dict[str, str], args: list[str], terminal: bool) -> tuple[int, str, str]:
    """``matchmaking <args>``: exit code, stdout, stderr (a pseudo-terminal when asked)."""
    cmd = [sys.executable, "-m", "matchmaking.cli", *args]
    if not terminal:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        return done.returncode, done.stdout, done.stderr
    master, slave = pty.openpty()
    # A terminal has a size (a bare pty is 0x0, where a bar has no room to draw).
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    chunks: list[bytes] = []

    def drain() -> None:  # a pty holds a few KiB: read while the command writes
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the command closed its end
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=slave, text=True)
        os.close(slave)
        stdout, _ = proc.communicate(timeout=600)
        reader.join(timeout=30)
    finally:
        os.close(master)
    return proc.returncode, stdout, b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def processed(env: dict[str, str]) -> Iterator[dict[str, Any]]:
    """``process`` on a terminal with no flag: its output, and the features it printed."""
    code, out, err = run_cli(
        env, ["process", "--city", "jakarta", "--start", "2026-08-02", "--end", "2026-08-04"], True
    )
    assert code == 0, err
    features = next(
        line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("features:")
    )
    yield {"stdout": out, "stderr": err, "features": features}


@pytest.mark.slow
def test_process_shows_each_step_on_a_terminal(processed: dict[str, Any]) -> None:
    err = processed["stderr"]
    positions = [err.find(f"process jakarta: {step}") for step in PROCESS_STEPS]
    assert all(p >= 0 for p in positions), err
    assert positions == sorted(positions), "steps in the order they run"
    assert "process jakarta: done" in err
    assert "process jakarta" not in processed["stdout"], "progress goes to stderr only"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flag", "terminal"), [("--no-progress", True), (None, False)], ids=["no-progress", "pipe"]
)
def test_process_is_silent_with_no_progress_or_off_a_terminal(
    env: dict[str, str], processed: dict[str, Any], flag: str | None, terminal: bool
) -> None:
    args = ["process", "--city", "jakarta", "--start", "2026-08-02", "--end", "2026-08-04"]
    code, out, err = run_cli(env, args + ([flag] if flag else []), terminal)
    assert code == 0, err
    assert "process jakarta:" not in err
    assert out.splitlines()[0] == f"features: {processed['features']}"


TRAIN_ARGS = ["--set", "objectives=binary", "--set", "valid_days=1", "--set", "num_boost_round=30"]


@pytest.fixture(scope="module")
def trained(env: dict[str, str], processed: dict[str, Any]) -> dict[str, Any]:
    """``train`` forced on (``--progress``) with stderr a pipe."""
    args = ["train", "--city", "jakarta", "--features", processed["features"], *TRAIN_ARGS]
    code, out, err = run_cli(env, [*args, "--progress"], False)
    assert code == 0, err
    uri = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("model_uri"))
    return {"args": args, "stdout": out, "stderr": err, "model_uri": uri}


@pytest.mark.slow
def test_train_forced_on_shows_steps_and_rounds_even_in_a_pipe(trained: dict[str, Any]) -> None:
    out, err = trained["stdout"], trained["stderr"]
    assert out.startswith("model: matchmaking-jakarta v"), "the result stays on stdout"
    positions = [err.find(f"train jakarta: {step}") for step in TRAIN_STEPS]
    assert all(p >= 0 for p in positions), err
    assert positions == sorted(positions)
    assert "round" in err.split("train jakarta: fitting binary", 1)[1], "a bar of rounds"
    assert "train jakarta: registered matchmaking-jakarta v" in err


@pytest.mark.slow
def test_the_choice_reaches_step_processes_through_the_environment(
    env: dict[str, str], trained: dict[str, Any]
) -> None:
    """What pipeline and demo set for their steps: off, even on a terminal."""
    args = [*trained["args"], "--no-reuse-existing"]
    code, _, err = run_cli({**env, "MATCHMAKING_PROGRESS": "0"}, args, True)
    assert code == 0, err
    assert "train jakarta:" not in err
    assert "round/s" not in err and "Downloading artifacts" not in err, "MLflow's bars are off too"


@pytest.mark.slow
def test_evaluate_shows_its_steps_and_where_the_plots_and_report_went(
    env: dict[str, str], processed: dict[str, Any], trained: dict[str, Any]
) -> None:
    args = ["evaluate", "--city", "jakarta", "--model-uri", trained["model_uri"]]
    code, out, err = run_cli(env, [*args, "--features", processed["features"]], True)
    assert code == 0, err
    for step in ("reading the holdout", "loading models:/", "replaying", "logging metrics", "done"):
        assert f"evaluate jakarta: {step}" in err, err
    lines = dict(
        line.split(": ", 1) for line in out.splitlines() if line.startswith(("plots", "report"))
    )
    plots = Path(urlsplit(lines["plots"].split(" ", 1)[0]).path)
    report = Path(urlsplit(lines["report"].split(" ", 1)[0]).path)
    assert {p.name for p in plots.iterdir()} >= {"feature_importance.png", "sim_replay.png"}
    assert "auc" in report.read_text()
    assert (report.parent / "summary.json").is_file()


# ---- the demo prints each evaluation table once -------------------------------------------


def test_the_demo_prints_each_evaluation_table_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """The evaluate steps print their city's table from processes of their own; the demo prints
    all cities' tables once. The steps' stdout goes to the steps log instead."""
    import matchmaking.demo as demo
    import matchmaking.orchestration.local as local
    import matchmaking.world.generate as generate
    from matchmaking.config import Settings

    table = "TABLE-OF-jakarta policy auc"

    class Summary:
        def to_table(self) -> str:
            return "world summary"

    def fake_day(day: date) -> local.DayOutcome:
        # What an evaluate step does: print its table from a child process.
        subprocess.run([sys.executable, "-c", f"print({table!r})"], check=True)
        return local.DayOutcome("success", "success", {"cities": {}}, [])

    monkeypatch.setattr(generate, "generate_world", lambda **kw: Summary())
    monkeypatch.setattr(local, "configure_airflow", lambda home, config: None)
    monkeypatch.setattr(local, "run_day", fake_day)
    monkeypatch.setattr(demo, "_show", lambda settings, evaluated: print(table) or [])
    settings = Settings(data_dir=tmp_path / "data")
    demo.run_demo(settings, days=7)
    out = capfd.readouterr().out
    assert out.count(table) == 1, out
    steps_log = tmp_path / "data" / "airflow" / "steps.log"
    assert f"output of the steps: {steps_log}" in out
    assert steps_log.read_text().count(table) == 1
