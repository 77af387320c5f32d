"""Offline metrics: classification on offered rows, ranking per booking."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from sklearn.metrics import log_loss, roc_auc_score

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def auc(labels: FloatArray, scores: FloatArray) -> float:
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, scores))


def logloss(labels: FloatArray, probs: FloatArray) -> float:
    return float(log_loss(labels, np.clip(probs, 1e-7, 1 - 1e-7), labels=[0, 1]))


def calibration_error(labels: FloatArray, probs: FloatArray, bins: int = 10) -> float:
    """Expected calibration error over equal-width probability bins."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(probs, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            total += mask.sum() * abs(labels[mask].mean() - probs[mask].mean())
    return float(total / max(len(labels), 1))


def calibration_curve(
    labels: FloatArray, probs: FloatArray, bins: int = 10
) -> tuple[FloatArray, FloatArray]:
    """Mean predicted probability and observed rate per non-empty bin."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(probs, edges[1:-1]), 0, bins - 1)
    pred, obs = [], []
    for b in range(bins):
        mask = idx == b
        if mask.any():
            pred.append(probs[mask].mean())
            obs.append(labels[mask].mean())
    return np.array(pred), np.array(obs)


def _group_starts(group: IntArray) -> IntArray:
    """Start offsets of runs of equal group codes (rows must be grouped)."""
    return np.flatnonzero(np.r_[True, group[1:] != group[:-1]])


def ranking_metrics(
    group: IntArray, scores: FloatArray, relevance: FloatArray, ks: tuple[int, ...] = (1, 5)
) -> dict[str, float]:
    """NDCG@k (graded relevance) and hit@1 (top pick is a most relevant item), mean per group.

    Rows must be contiguous by group. Groups with a single row are skipped.
    """
    starts = _group_starts(group)
    ends = np.r_[starts[1:], len(group)]
    ndcg: dict[int, list[float]] = {k: [] for k in ks}
    hits: list[float] = []
    for s, e in zip(starts, ends, strict=True):
        if e - s < 2:
            continue
        rel = relevance[s:e]
        order = np.argsort(-scores[s:e], kind="stable")
        ideal = np.sort(rel)[::-1]
        for k in ks:
            disc = 1.0 / np.log2(np.arange(2, min(k, e - s) + 2))
            dcg = float((rel[order][:k] * disc).sum())
            idcg = float((ideal[:k] * disc).sum())
            ndcg[k].append(dcg / idcg if idcg > 0 else 1.0)
        hits.append(float(rel[order[0]] >= ideal[0]))
    out = {f"ndcg_at_{k}": float(np.mean(v)) if v else float("nan") for k, v in ndcg.items()}
    out["hit_at_1"] = float(np.mean(hits)) if hits else float("nan")
    return out
