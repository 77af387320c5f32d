"""Serving logs of a city's live traffic, written through the lake contract
(``serving_log.write_log``), as the scoring service and dispatch would leave them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from matchmaking.lake import serving_log
from matchmaking.schema import DECISIONS, OUTCOMES

T0 = datetime(2026, 9, 1, 6, 0, tzinfo=UTC)


@dataclass
class Arm:
    """One arm's traffic: who answered, how often a first offer is accepted."""

    arm: str
    version: str | None
    p_accept: float
    bookings: int
    served: bool = True
    scope: str = "city"  # "country": answered by the city's country model (mm-country-<cc>)


@dataclass
class Written:
    """What the builder wrote, counted from its own rows (the report must find the same)."""

    bookings: dict[str, int] = field(default_factory=dict)
    first_offers: dict[str, int] = field(default_factory=dict)
    first_accepted: dict[str, int] = field(default_factory=dict)
    offers: dict[str, int] = field(default_factory=dict)
    completed: dict[str, int] = field(default_factory=dict)
    accepted_eta_s: dict[str, list[float]] = field(default_factory=dict)


def write_traffic(
    lake: Path,
    arms: list[Arm],
    seed: int = 0,
    city: str = "jakarta",
    temperature: float | None = 0.5,
    shadow: Arm | None = None,
) -> Written:
    """Decisions (3 ranked candidates per answer) and their outcomes for each served arm:
    offers in order until one accepts (position 1 with ``p_accept``, later ones at 0.5), a
    completed trip for 9 in 10 acceptances. ``shadow`` scores a share of the same bookings."""
    rng = np.random.default_rng(seed)
    decisions: list[dict[str, object]] = []
    outcomes: list[dict[str, object]] = []
    got = Written()
    k = 0
    for a in arms:
        label = f"{a.arm}:{a.version or ''}"
        for key in ("bookings", "first_offers", "first_accepted", "offers", "completed"):
            getattr(got, key)[label] = 0
        got.accepted_eta_s[label] = []
        for _ in range(a.bookings):
            k += 1
            booking, request = f"{city}-b{k:06d}", f"req-{k}"
            at = T0 + timedelta(seconds=7 * k)
            first = rng.dirichlet(np.ones(3))
            drivers = [f"d{rng.integers(0, 500)}-{j}" for j in range(3)]
            etas = sorted(rng.uniform(60, 600, 3).tolist())
            for pos, (drv, eta) in enumerate(zip(drivers, etas, strict=True), start=1):
                decisions.append(
                    {
                        "request_id": request,
                        "booking_id": booking,
                        "city": city,
                        "decided_at": at,
                        "endpoint": "rank",
                        "model_name": None
                        if a.version is None
                        else ("mm-country-id" if a.scope == "country" else f"mm-{city}"),
                        "model_version": a.version,
                        "model_scope": a.scope if a.version else "fallback",
                        "arm": a.arm,
                        "served": True,
                        "driver_id": drv,
                        "position": pos,
                        "score": 0.5,
                        "eta_seconds": eta,
                        "first_propensity": float(first[pos - 1]),
                        "propensity": 0.5,
                        "policy": "plackett-luce" if temperature else "greedy",
                        "temperature": temperature,
                    }
                )
            if shadow is not None and k % 3 == 0:
                for pos, drv in enumerate(reversed(drivers) if k % 2 else drivers, start=1):
                    decisions.append(
                        {
                            **decisions[-1],
                            "request_id": f"shadow-{k}",
                            "model_version": shadow.version,
                            "arm": "shadow",
                            "served": False,
                            "driver_id": drv,
                            "position": pos,
                        }
                    )
            got.bookings[label] += 1
            got.first_offers[label] += 1
            for pos, (drv, eta) in enumerate(zip(drivers, etas, strict=True), start=1):
                accepts = rng.random() < (a.p_accept if pos == 1 else 0.5)
                got.offers[label] += 1
                got.first_accepted[label] += int(accepts and pos == 1)
                outcomes.append(
                    {
                        "booking_id": booking,
                        "driver_id": drv,
                        "position": pos,
                        "city": city,
                        "stage": "offer",
                        "outcome": "accepted" if accepts else "declined",
                        "occurred_at": at,
                        "received_at": at + timedelta(seconds=20),
                        "request_id": request,
                    }
                )
                if accepts:
                    got.accepted_eta_s[label].append(eta)
                    done = rng.random() < 0.9
                    got.completed[label] += int(done)
                    outcomes.append(
                        {
                            **outcomes[-1],
                            "stage": "trip",
                            "outcome": "completed" if done else "rider_cancelled",
                            "received_at": at + timedelta(minutes=30),
                        }
                    )
                    break
    serving_log.write_log(lake, "decisions", pa.Table.from_pylist(decisions, schema=DECISIONS))
    serving_log.write_log(lake, "outcomes", pa.Table.from_pylist(outcomes, schema=OUTCOMES))
    return got
