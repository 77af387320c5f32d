"""Evaluation plots (matplotlib, headless)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
import pandas as pd
from matplotlib.figure import Figure

from matchmaking.evaluation.metrics import calibration_curve


def close_figure(figure: Figure) -> None:
    """Release a figure once logged (pyplot keeps every figure it made until closed)."""
    plt.close(figure)


def plot_importance(names: list[str], gains: npt.NDArray[np.float64]) -> Figure:
    order = np.argsort(gains)
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.barh(np.array(names)[order], np.asarray(gains)[order])
    ax.set_xlabel("total gain")
    ax.set_title("Feature importance")
    fig.tight_layout()
    return fig


def plot_calibration(
    labels: npt.NDArray[np.float64], probs: dict[str, npt.NDArray[np.float64]]
) -> Figure:
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    for name, p in probs.items():
        pred, obs = calibration_curve(labels, p)
        ax.plot(pred, obs, marker="o", label=name)
    ax.set_xlabel("predicted acceptance")
    ax.set_ylabel("observed acceptance (offered rows)")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_policies(table: pd.DataFrame) -> Figure:
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.5))
    for ax, col in zip(axes, ("acceptance", "completion", "pickup_eta_p50_min"), strict=True):
        ax.bar(table.index.astype(str), table[col].to_numpy())
        ax.set_title(col)
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


def plot_estimates(table: pd.DataFrame, truth: pd.Series | None = None) -> Figure:
    """Each policy's off-policy estimates of first-offer acceptance (IPS, SNIPS, DR) with
    their intervals; ``truth`` (simulator only): the true value per policy, as a line."""
    estimators = ("ips", "snips", "dr")
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(table))
    for i, name in enumerate(estimators):
        mid = table[name].to_numpy(dtype=np.float64)
        low = mid - table[f"{name}_ci_low"].to_numpy(dtype=np.float64)
        high = table[f"{name}_ci_high"].to_numpy(dtype=np.float64) - mid
        ax.errorbar(
            x + (i - 1) * 0.2, mid, yerr=[low, high], fmt="o", capsize=4, label=name.upper()
        )
    if truth is not None:
        values = truth.reindex(table.index).to_numpy(dtype=np.float64)
        ax.hlines(values, x - 0.35, x + 0.35, colors="k", linestyles="--", label="true (sim)")
    ax.set_xticks(x, table.index.astype(str))
    ax.set_ylabel("first-offer acceptance")
    ax.set_title("Off-policy estimates (95% intervals)")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_arm_acceptance(table: pd.DataFrame, confidence: float) -> Figure:
    """First-offer acceptance of each arm and version of live traffic (``experiment report``)
    with its interval; shadow rows are inverse-propensity estimates, drawn hollow."""
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [
        f"{arm}\nv{version}" if version else str(arm)
        for arm, version in zip(table["arm"], table["version"], strict=True)
    ]
    x = np.arange(len(table))
    mid = table["acceptance"].to_numpy(dtype=np.float64)
    low = mid - table["acceptance_ci_low"].to_numpy(dtype=np.float64)
    high = table["acceptance_ci_high"].to_numpy(dtype=np.float64) - mid
    served = table["served"].to_numpy(dtype=bool)
    for mask, style, name in ((served, "o", "served"), (~served, "s", "shadow (IPS)")):
        if mask.any():
            ax.errorbar(
                x[mask],
                mid[mask],
                yerr=[low[mask], high[mask]],
                fmt=style,
                capsize=5,
                mfc="none" if name.startswith("shadow") else None,
                label=name,
            )
    ax.set_xticks(x, labels)
    ax.set_ylabel("first-offer acceptance")
    ax.set_title(f"Live traffic per arm ({confidence:.0%} intervals)")
    ax.legend()
    fig.tight_layout()
    return fig
