"""A small generated world to serve days of, and a ranking policy that answers in process the
way the scoring service's exploring policy does (for the tests that do not need the HTTP hop)."""

from __future__ import annotations

import threading
from datetime import date, datetime
from typing import Any

import numpy as np

#: Plackett-Luce over the negated ETA (minutes) / temperature, the exact propensities returned.
TEMPERATURE = 0.75


class EtaPolicyService:
    """Ranks like an exploring scoring service (Plackett-Luce over ETA, exact propensities,
    every answer field of the decision log) and records every request and outcome."""

    def __init__(self, version: str = "7") -> None:
        self.version = version
        self.requests: list[dict[str, Any]] = []
        self.outcomes: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def rank(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.requests.append(body)
            k = len(self.requests)
        cands = body["candidates"]
        u = -np.array([c["eta_seconds"] for c in cands]) / 60.0 / TEMPERATURE
        first = np.exp(u - u.max())
        first /= first.sum()
        order = np.argsort(-(u + np.random.default_rng(k).gumbel(size=len(u))))
        ranked, left = [], list(order)
        for pos, i in enumerate(order, start=1):
            w = np.exp(u[left] - u[left].max())
            cond = float(np.exp(u[i] - u[left].max()) / w.sum())
            left.remove(i)
            ranked.append(
                {
                    "driver_id": cands[i]["driver_id"],
                    "rank": pos,
                    "score": None,
                    "eta_seconds": cands[i]["eta_seconds"],
                    "first_propensity": float(first[i]),
                    "propensity": cond,
                }
            )
        return {
            "request_id": f"req-{k}",
            "booking_id": body["booking"]["booking_id"],
            "city": body["booking"]["city"],
            "arm": "champion",
            "model_scope": "city",
            "policy": "plackett-luce",
            "temperature": TEMPERATURE,
            "model": "test-model",
            "version": self.version,
            "score_kind": "probability",
            "fallback": False,
            "candidates": ranked,
        }

    def post_outcomes(self, outcomes: list[dict[str, Any]]) -> None:
        with self._lock:
            self.outcomes.extend(outcomes)


def busy_violations(service: EtaPolicyService) -> list[str]:
    """Drivers sent as candidates while on a trip they accepted: from the requests (when each
    booking was requested, whom it listed) and the outcomes (who accepted, when the trip
    ended)."""
    asked = {
        b["booking"]["booking_id"]: (
            datetime.fromisoformat(b["booking"]["requested_at"]),
            {c["driver_id"] for c in b["candidates"]},
        )
        for b in service.requests
    }
    found = []
    for o in service.outcomes:
        if o["stage"] != "trip":
            continue
        start = asked[o["booking_id"]][0]
        end = datetime.fromisoformat(o["occurred_at"])
        for booking, (at, drivers) in asked.items():
            if start < at < end and o["driver_id"] in drivers:
                found.append(f"{o['driver_id']} busy {start}..{end}, candidate of {booking}")
    return found


START = date(2026, 10, 1)
