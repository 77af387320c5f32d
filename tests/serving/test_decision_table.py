"""The decision log's rows: one per ranked candidate and per assigned booking, whatever form the
writer gathers them in (dictionary columns, driver ids split by arrow), read back in the
contract after a publish."""

from __future__ import annotations

import gc
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from matchmaking.lake.serving_log import log_files, read_log, write_log
from matchmaking.lake.storage import Location
from matchmaking.schema import DECISIONS
from serving.decisions import ANSWER_KEYS, Decision, LogWriter, compact, decisions_table
from serving.metrics import Metrics
from serving.scoring import Ranked

AT = datetime(2026, 9, 1, 10, 5, tzinfo=UTC)


def _body(booking: str, city: str, **extra: Any) -> dict[str, Any]:
    return {
        "booking_id": booking,
        "city": city,
        "model": f"matchmaking-{city}",
        "version": "3",
        "model_scope": "city",
        "policy": "greedy",
        "temperature": None,
        **extra,
    }


def _ranked(drivers: list[str], first: float = 1.0) -> Ranked:
    n = len(drivers)
    return Ranked(
        drivers,
        np.linspace(0.9, 0.1, n),
        np.arange(n, dtype=np.float64) * 60.0,
        np.full(n, first),
        np.full(n, 0.5),
    )


def _expected(records: list[Decision]) -> list[dict[str, Any]]:
    """The rows the contract asks for, written out one by one from the answers."""
    rows = []
    for d in records:
        b = d.body
        shared = {
            "request_id": d.request_id,
            "city": b["city"],
            "decided_at": d.decided_at,
            "endpoint": d.endpoint,
            "model_name": b["model"],
            "model_version": b["version"],
            "model_scope": b["model_scope"],
            "arm": d.arm,
            "served": d.served,
            "policy": b["policy"],
            "temperature": b["temperature"],
        }
        if d.ranked is not None:
            r = d.ranked
            for k, driver in enumerate(r.driver_id):
                rows.append(
                    {
                        **shared,
                        "booking_id": b["booking_id"],
                        "driver_id": driver,
                        "position": k + 1,
                        "score": float(r.score[k]),
                        "eta_seconds": float(r.eta_seconds[k]),
                        "first_propensity": float(r.first_propensity[k]),
                        "propensity": float(r.propensity[k]),
                    }
                )
        elif d.endpoint == "match":
            for a in b["assignments"]:
                if a["driver_id"] is None:
                    continue
                rows.append(
                    {
                        **shared,
                        "booking_id": a["booking_id"],
                        "driver_id": a["driver_id"],
                        "position": 1,
                        "score": a["score"],
                        "eta_seconds": a["eta_seconds"],
                        "first_propensity": 1.0,
                        "propensity": 1.0,
                    }
                )
        else:
            for c in b["candidates"]:
                rows.append(
                    {
                        **shared,
                        "booking_id": b["booking_id"],
                        "driver_id": c["driver_id"],
                        "position": c["rank"],
                        "score": c["score"],
                        "eta_seconds": c["eta_seconds"],
                        "first_propensity": c["first_propensity"],
                        "propensity": c["propensity"],
                    }
                )
    return rows


def _records() -> list[Decision]:
    fallback = [
        {
            "driver_id": f"f{k}",
            "rank": k + 1,
            "score": None,
            "eta_seconds": 30.0 * k,
            "first_propensity": 1.0 if k == 0 else 0.0,
            "propensity": 1.0,
        }
        for k in range(3)
    ]
    assignments = [
        {"booking_id": "m1", "driver_id": "d7", "score": 0.4, "eta_seconds": 90.0},
        {"booking_id": "m2", "driver_id": None, "score": None, "eta_seconds": None},
        {"booking_id": "m3", "driver_id": "d8", "score": 0.2, "eta_seconds": 45.0},
    ]
    return [
        Decision("rank", "r1", AT, _body("b1", "jakarta"), "champion", ranked=_ranked(["a", "b"])),
        Decision(
            "rank",
            "r2",
            AT,
            _body("b2", "jakarta", version="4", policy="plackett-luce", temperature=0.5),
            "challenger",
            ranked=_ranked(["c", "a", "d"], first=0.3),
        ),
        Decision(
            "rank", "r2", AT, _body("b2", "jakarta"), "shadow", served=False, ranked=_ranked(["a"])
        ),
        Decision(
            "rank",
            "r3",
            AT,
            _body(
                "b3",
                "bangkok",
                model=None,
                version=None,
                model_scope="fallback",
                candidates=fallback,
            ),
            "fallback",
        ),
        Decision("match", "r4", AT, _body("", "bangkok", assignments=assignments), "champion"),
        Decision("rank", "r5", AT, _body("b5", "jakarta"), "champion", ranked=_ranked([])),
        # A driver id holding the writer's separator is kept whole.
        Decision(
            "rank", "r6", AT, _body("b6", "jakarta"), "champion", ranked=_ranked(["x\x1fy", "z"])
        ),
    ]


def test_every_answer_becomes_its_rows_in_the_contract() -> None:
    records = _records()
    table = decisions_table(records)
    assert table.cast(DECISIONS).to_pylist() == _expected(records)
    assert table.num_rows == 2 + 3 + 1 + 3 + 2 + 0 + 2
    assert decisions_table([]).num_rows == 0


def test_published_rows_read_back_plain_one_file_per_city_hour(tmp_path: Path) -> None:
    records = _records()
    assert write_log(tmp_path, "decisions", decisions_table(records)) == 2
    assert [len(log_files(tmp_path, "decisions", c)) for c in ("bangkok", "jakarta")] == [1, 1]
    back = pa.concat_tables(read_log(tmp_path, "decisions", c) for c in ("bangkok", "jakarta"))
    assert back.schema == DECISIONS
    expected = _expected(records)
    want = [r for r in expected if r["city"] == "bangkok"] + [
        r for r in expected if r["city"] == "jakarta"
    ]
    assert back.to_pylist() == want


def test_a_ranked_decision_keeps_the_answer_values_not_its_candidate_dicts() -> None:
    candidates = [{"driver_id": "a", "rank": 1}, {"driver_id": "b", "rank": 2}]
    body = _body("b1", "jakarta", request_id="r1", candidates=candidates, fallback=False)
    kept = Decision.ranking("r1", AT, body, "champion", _ranked(["a", "b"]))
    assert set(kept.body) == set(ANSWER_KEYS)
    full = Decision("rank", "r1", AT, body, "champion", ranked=_ranked(["a", "b"]))
    assert decisions_table([kept]).equals(decisions_table([full]))


def test_the_queued_form_of_an_answer_gives_the_same_rows() -> None:
    records = _records()
    queued = [compact(d) for d in records]
    assert sum(isinstance(q, tuple) for q in queued) == 5  # the ranked answers of models
    assert decisions_table(queued).equals(decisions_table(records))


def test_a_queued_answer_is_out_of_the_garbage_collectors_reach(tmp_path: Path) -> None:
    """Caught: a flush interval of answers queued as tracked objects, which every full
    collection walks (the log cost throughput the longer the interval)."""
    writer = LogWriter(Location.of(tmp_path), Metrics(), queue_size=10, flush_seconds=60.0)
    body = _body("b1", "jakarta", request_id="r1", candidates=[], fallback=False)
    assert writer.decision(Decision.ranking("r1", AT, body, "champion", _ranked(["a", "b"])))
    gc.collect()
    gc.collect()  # a tuple is untracked at the first collection that finds its items untracked
    (queued,) = writer._decisions
    assert not gc.is_tracked(queued)
    writer.flush()
    assert read_log(tmp_path, "decisions", "jakarta").column("driver_id").to_pylist() == ["a", "b"]
