"""Inverse-propensity weighted training against unweighted training: held-out logged
estimates and the simulator's oracle (``TrainParams.sample_weights``, issue 12 item 5).

For each (city, seed): the world and windows of ``benchmarks.ope`` (scale 0.002, 7 days of
history, 14 training days, a 7-day holdout); ``train`` with the default params
(``sample_weights=[none]``), then ``train`` with ``sample_weights=[ipw]`` on the objective the
first run chose (what ``sample_weights=[none, ipw]`` fits); the comparison
``sample_weights=[none, ipw]`` makes on the training window's validation days (paired DR of
first-offer acceptance, ``training.weighting.compare``); and both models evaluated on the later
holdout with ``evaluate``'s function: logged metrics, off-policy estimates and the simulator
diagnostics (``sim.ope.model.true_value``: the true expected first-offer acceptance of the
model's first choices, ``sim.replay.*``, ``sim.oracle.*``).

Run: ``python -m benchmarks.run --only ipw`` (report: ``benchmarks/reports/ipw.md``).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from benchmarks.common import machine_lines
from benchmarks.ope import CITIES, EVAL_SEED, HISTORY_DAYS, HOLDOUT_DAYS, SCALE, START, TRAIN_DAYS

logger = logging.getLogger("benchmarks.ipw")

REPORT = Path(__file__).parent / "reports" / "ipw.md"
SEEDS = (101, 202)
WEIGHTINGS = ("none", "ipw")
#: Holdout metrics compared, with how they read (higher is better unless said).
HOLDOUT = (
    ("sim.ope.model.true_value", "oracle: true first-offer acceptance of the model's choices"),
    ("sim.replay.model.acceptance", "oracle replay acceptance (one draw)"),
    ("sim.oracle.model.ndcg_at_1", "oracle NDCG@1 over all candidates"),
    ("ope.model.dr", "logged: DR estimate of first-offer acceptance"),
    ("ope.model.snips", "logged: SNIPS estimate"),
    ("logged.model.auc", "logged: AUC on offered rows"),
    ("logged.model.logloss", "logged: log loss on offered rows (lower is better)"),
)


@dataclass(frozen=True)
class Pair:
    city: str
    seed: int
    objective: str
    holdout: dict[str, dict[str, float]]  # weighting -> evaluate's metrics
    validation: dict[str, float]  # weighting.compare's metrics
    kept: bool  # what sample_weights=[none, ipw] decides
    train_seconds: dict[str, float]
    clip: float

    def m(self, weighting: str, name: str) -> float:
        return float(self.holdout[weighting].get(name, float("nan")))

    def gain(self, name: str) -> float:
        return self.m("ipw", name) - self.m("none", name)


def run_pair(city: str, seed: int, root: Path) -> Pair:
    """One world, both weightings trained, compared on validation and evaluated on holdout."""
    import mlflow

    from matchmaking.config import Settings
    from matchmaking.evaluation.evaluate import evaluate
    from matchmaking.lake.datasets import read_published_manifest
    from matchmaking.processing.step import build_dataset
    from matchmaking.scorer import ScoreKind
    from matchmaking.training.data import read_candidates, read_labelled, split
    from matchmaking.training.params import load_params
    from matchmaking.training.train import train
    from matchmaking.training.weighting import compare, held_out_estimate
    from matchmaking.world.generate import generate_world

    settings = Settings(data_dir=root, tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    generate_world(
        [city],
        START,
        HISTORY_DAYS + TRAIN_DAYS + HOLDOUT_DAYS,
        seed,
        settings.lake_dir,
        SCALE,
        None,
        False,
    )
    train_start = START + timedelta(days=HISTORY_DAYS)
    train_end = train_start + timedelta(days=TRAIN_DAYS - 1)
    tr = build_dataset(settings, city, train_start, train_end, max_bad_share=0.05)
    ho = build_dataset(
        settings,
        city,
        train_end + timedelta(days=1),
        train_end + timedelta(days=HOLDOUT_DAYS),
        max_bad_share=0.05,
    )
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    base_params = load_params()
    none = train(settings, city, tr.dataset_dir, base_params, reuse_existing=False)
    seconds["none"] = time.perf_counter() - started
    started = time.perf_counter()
    ipw_params = load_params(overrides={"objectives": [none.objective], "sample_weights": ["ipw"]})
    ipw = train(settings, city, tr.dataset_dir, ipw_params, reuse_existing=False)
    seconds["ipw"] = time.perf_counter() - started
    uris = {"none": none.model_uri, "ipw": ipw.model_uri}

    manifest = read_published_manifest(tr.dataset_dir)
    read = read_labelled(tr.dataset_dir, manifest, base_params)
    _, valid = split(read.data, base_params.valid_days)
    cands = read_candidates(tr.dataset_dir, manifest, valid.day.min())
    kind: ScoreKind = "probability" if none.objective == "binary" else "rank_score"
    held = {}
    for w, uri in uris.items():
        booster = mlflow.lightgbm.load_model(uri)
        held[w] = held_out_estimate(
            booster.predict(cands.x),
            kind,
            cands.booking,
            cands.offer_order,
            cands.first_offer_propensity,
            cands.accepted,
            seed=base_params.seed,
        )
    comparison = compare(held["none"], held["ipw"], base_params.ipw_min_gain)
    holdout = {
        w: dict(
            evaluate(settings, city, uri, ho.dataset_dir, seed=EVAL_SEED, log_run=False).metrics
        )
        for w, uri in uris.items()
    }
    return Pair(
        city,
        seed,
        none.objective,
        holdout,
        comparison.metrics,
        comparison.keep_weighted,
        seconds,
        ipw_params.ipw_clip,
    )


def _pt(v: float) -> str:
    return f"{100 * v:+.2f}"


def render(pairs: list[Pair], elapsed: float) -> str:
    oracle = "sim.ope.model.true_value"
    oracle_better = [p for p in pairs if p.gain(oracle) > 0]
    agree = [p for p in pairs if p.kept == (p.gain(oracle) > 0)]
    kept = [p for p in pairs if p.kept]
    point = [p for p in pairs if p.validation["valid_ope_dr_gain_ipw"] > 0]
    point_gain = float(np.mean([p.gain(oracle) for p in point])) if point else float("nan")
    kept_gain = float(np.mean([p.gain(oracle) for p in kept])) if kept else float("nan")
    ratio = float(np.mean([p.train_seconds["ipw"] / p.train_seconds["none"] for p in pairs]))
    clip = pairs[0].clip if pairs else float("nan")
    lines = [
        "# Benchmark: inverse-propensity weighted training against unweighted",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {elapsed / 60:.1f} min, load average "
        f"{os.getloadavg()[0]:.1f} at the end. Command: `.venv/bin/python -m benchmarks.run "
        "--only ipw` (part of `make bench`).",
        "",
        *machine_lines(("numpy", "scikit-learn", "lightgbm", "mlflow")),
        "",
        f"Setup: {len(CITIES)} cities x {len(SEEDS)} seeds ({', '.join(CITIES)}; seeds "
        f"{', '.join(map(str, SEEDS))}), the worlds and windows of `benchmarks/ope.py` (scale "
        f"{SCALE}, {HISTORY_DAYS} days of history, {TRAIN_DAYS} training days of which the "
        f"last 5 validate, a {HOLDOUT_DAYS}-day holdout). `none`: `train` with the default "
        "params. `ipw`: the same objective with `sample_weights=[ipw]` (weights 1 / "
        f"offer_propensity capped at `ipw_clip` = {clip:g}, per booking for LambdaRank, mean "
        "1). *Validation*: the paired DR gain that `sample_weights=[none, ipw]` decides on "
        "(training window's validation days, logged data only). *Holdout*: both models "
        "through `evaluate` on the later holdout; `oracle` is the true expected first-offer "
        "acceptance of the model's first choices (`sim.ope.model.true_value`, the simulator "
        "only).",
        "",
        "## Summary (ipw minus none, in points unless said)",
        "",
        "| metric | mean gain | min | max | pairs ipw better |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, label in HOLDOUT:
        gains = np.array([p.gain(name) for p in pairs])
        better = (gains < 0) if name.endswith("logloss") else (gains > 0)
        scale = 1.0 if name.endswith(("auc", "logloss")) else 100.0
        fmt = ".4f" if scale == 1.0 else ".2f"
        lines.append(
            f"| {label} (`{name}`) | {scale * gains.mean():+{fmt}} | {scale * gains.min():+{fmt}} "
            f"| {scale * gains.max():+{fmt}} | {int(better.sum())} of {len(pairs)} |"
        )
    val = np.array([p.validation["valid_ope_dr_gain_ipw"] for p in pairs])
    lines += [
        f"| validation: paired DR gain (`valid_ope_dr_gain_ipw`) | {100 * val.mean():+.2f} "
        f"| {100 * val.min():+.2f} | {100 * val.max():+.2f} | {int((val > 0).sum())} of "
        f"{len(pairs)} |",
        "",
        f"- The oracle says the weighted model is better in {len(oracle_better)} of "
        f"{len(pairs)} pairs.",
        f"- `sample_weights=[none, ipw]` (the rule in force) keeps the weighted model in "
        f"{len(kept)} of {len(pairs)} pairs; its decision agrees with the oracle in "
        f"{len(agree)} of {len(pairs)}"
        + (f" (oracle gain where kept: {_pt(kept_gain)} pt)." if kept else "."),
        f"- A rule on the point estimate alone (gain > 0, not the rule in force: the lower end "
        f"of its interval > `ipw_min_gain`) would keep it in {len(point)} of {len(pairs)}"
        + (f" (oracle gain there: {_pt(point_gain)} pt)." if point else "."),
        f"- Training time, `ipw` run / `none` run: {ratio:.2f} (the `none` run fits both "
        "objectives, the `ipw` run one). `sample_weights=[none, ipw]` costs one more fit and "
        "an evaluation of the validation days' candidates on top of `none`.",
        "",
        "## Per city and seed",
        "",
        "| city | seed | objective | oracle none | oracle ipw | holdout DR none | holdout DR "
        "ipw | logged AUC none / ipw | validation DR gain [95%] | kept | train s none / ipw |",
        "|---|---:|---|---:|---:|---:|---:|---|---|---|---|",
    ]
    for p in pairs:
        v = p.validation
        lines.append(
            f"| {p.city} | {p.seed} | {p.objective} | {p.m('none', oracle):.4f} "
            f"| {p.m('ipw', oracle):.4f} | {p.m('none', 'ope.model.dr'):.4f} "
            f"| {p.m('ipw', 'ope.model.dr'):.4f} "
            f"| {p.m('none', 'logged.model.auc'):.4f} / {p.m('ipw', 'logged.model.auc'):.4f} "
            f"| {_pt(v['valid_ope_dr_gain_ipw'])} [{_pt(v['valid_ope_dr_gain_ipw_ci_low'])}, "
            f"{_pt(v['valid_ope_dr_gain_ipw_ci_high'])}] | {'yes' if p.kept else 'no'} "
            f"| {p.train_seconds['none']:.0f} / {p.train_seconds['ipw']:.0f} |"
        )
    lines.append("")
    return "\n".join(lines)


def main(report: Path = REPORT) -> None:
    started = time.perf_counter()
    pairs = []
    for city in CITIES:
        for seed in SEEDS:
            root = Path(tempfile.mkdtemp(prefix=f"bench-ipw-{city}-{seed}-"))
            try:
                pair = run_pair(city, seed, root)
            finally:
                shutil.rmtree(root, ignore_errors=True)
            logger.info(
                "%s seed %d: oracle none %.4f ipw %.4f, validation gain %+.4f (kept: %s)",
                city,
                seed,
                pair.m("none", "sim.ope.model.true_value"),
                pair.m("ipw", "sim.ope.model.true_value"),
                pair.validation["valid_ope_dr_gain_ipw"],
                pair.kept,
            )
            pairs.append(pair)
    report.write_text(render(pairs, time.perf_counter() - started))
    logger.info("report: %s", report)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    main()
