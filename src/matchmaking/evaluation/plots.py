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
