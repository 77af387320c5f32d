"""The closed loop's serving side on real parts: a real uvicorn server, the real tracking
server, a real lake. Every answer is in the decision log, outcomes are stored once, the log
survives a full queue, an unwritable lake and a killed process, and a challenger's share and
mode come from registry tags without a restart."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient
from support.live import ServerThread, rank_body
from support.processes import free_port, wait_for_200
from support.registered import Registered, serve_settings

from matchmaking.lake import serving_log
from matchmaking.registry import conventions
from serving import policy
from serving.app import create_app

MATCHMAKING = Path(sys.executable).parent / "matchmaking"


@pytest.fixture(scope="module")
def loop_registry(tracking_server, tmp_path_factory: pytest.TempPathFactory) -> Registered:  # type: ignore[no-untyped-def]
    """Jakarta v1 at ``production`` and v2 at ``challenger``, under a module-unique prefix."""
    tmp = tmp_path_factory.mktemp("loop-models")
    reg = Registered(uri=tracking_server.uri, prefix=f"loop{uuid.uuid4().hex[:8]}", tmp=tmp)
    reg.register("jakarta", 11)
    reg.register("jakarta", 12, alias=conventions.CHALLENGER_ALIAS)
    return reg


def _client(reg: Registered) -> MlflowClient:
    return MlflowClient(tracking_uri=reg.uri, registry_uri=reg.uri)


def _set_traffic(reg: Registered, **tags: str | None) -> None:
    """Set (value) or delete (None) registered-model tags of Jakarta's model."""
    client, name = _client(reg), reg.name("jakarta")
    for key, value in tags.items():
        if value is None:
            with contextlib.suppress(Exception):
                client.delete_registered_model_tag(name, key)
        else:
            client.set_registered_model_tag(name, key, value)


def _metric(url: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples (``<name>`` or ``<name>_total``) with these labels."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric not in (name, f"{name}_total"):
            continue
        got = dict(p.split("=", 1) for p in rest.rstrip("}").split(",") if p)
        if all(got.get(k) == f'"{v}"' for k, v in labels.items()):
            total += float(value)
    return total


def _wait(cond: Any, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def _published(lake: Path) -> list[Path]:
    return sorted((lake / "serving").rglob("*.parquet"))


def _assert_whole(lake: Path) -> None:
    """Every file under <lake>/serving is published (no hidden temp file) and valid parquet."""
    leftovers = [p for p in (lake / "serving").rglob(".*") if p.is_file()]
    assert leftovers == [], leftovers
    for path in _published(lake):
        pq.read_table(path)  # raises on a truncated or corrupt file


def _booking(k: int, n: int = 4) -> dict[str, Any]:
    body = rank_body(n=n, seed=k)
    body["booking"]["booking_id"] = f"bk-{k}"
    return body


def _outcome(
    booking: str, driver: str, position: int, outcome: str = "accepted", **kw: Any
) -> dict[str, Any]:
    return {
        "booking_id": booking,
        "driver_id": driver,
        "position": position,
        "city": "jakarta",
        "stage": kw.pop("stage", "offer"),
        "outcome": outcome,
        "occurred_at": "2026-11-27T08:16:00+07:00",
        **kw,
    }


# -- decisions and outcomes -------------------------------------------------------------------


def test_every_answer_is_logged_once_with_what_was_answered(
    loop_registry: Registered, tmp_path: Path
) -> None:
    _set_traffic(loop_registry, **{conventions.CHALLENGER_SHARE_TAG: None})
    lake = tmp_path / "lake"
    settings = serve_settings(loop_registry, lake_uri=str(lake), decision_flush_seconds=0.2)
    answers: dict[str, dict[str, Any]] = {}
    with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url) as c:
        for k in range(25):
            r = c.post("/v1/rank", json=_booking(k), headers={"X-Request-ID": f"rq-{k}"})
            assert r.status_code == 200, r.text
            answers[r.json()["request_id"]] = r.json()
        r = c.post("/v1/rank", json=_booking(99, n=2))  # no id given: one is made
        assert r.status_code == 200 and r.json()["request_id"] == r.headers["x-request-id"]
        answers[r.json()["request_id"]] = r.json()
        assert c.post("/v1/rank", json={"booking": {}}).status_code == 422  # not an answer
        match = c.post(
            "/v1/match",
            json={
                "city": "jakarta",
                "bookings": [
                    {k: v for k, v in _booking(k)["booking"].items() if k != "city"}
                    for k in (200, 201)
                ],
                "drivers": [
                    {k: v for k, v in d.items() if k != "eta_seconds"}
                    for d in _booking(5, n=3)["candidates"]
                ],
            },
            headers={"X-Request-ID": "match-1"},
        )
        assert match.status_code == 200, match.text
    # Shutdown flushed the queue.
    assert set(answers) == {f"rq-{k}" for k in range(25)} | {r.json()["request_id"]}
    log = serving_log.read_log(lake, "decisions", "jakarta").to_pylist()
    ranked = [row for row in log if row["endpoint"] == "rank"]
    assert len(ranked) == sum(len(a["candidates"]) for a in answers.values())
    for row in ranked:
        answer = answers[row["request_id"]]
        cand = answer["candidates"][row["position"] - 1]
        assert row["booking_id"] == answer["booking_id"]
        assert row["driver_id"] == cand["driver_id"] and row["score"] == cand["score"]
        assert row["first_propensity"] == cand["first_propensity"]
        assert row["propensity"] == cand["propensity"]
        assert (row["model_name"], row["model_version"]) == (answer["model"], answer["version"])
        assert (row["arm"], row["served"], row["policy"]) == ("champion", True, "greedy")
        assert row["model_scope"] == "city" and row["temperature"] is None
    matched = [row for row in log if row["endpoint"] == "match"]
    assigned = [a for a in match.json()["assignments"] if a["driver_id"] is not None]
    assert sorted((r["booking_id"], r["driver_id"]) for r in matched) == sorted(
        (a["booking_id"], a["driver_id"]) for a in assigned
    )
    assert {r["request_id"] for r in matched} == {"match-1"}
    _assert_whole(lake)


def test_outcomes_posted_twice_are_stored_once_and_bad_ones_refused(
    loop_registry: Registered, tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    settings = serve_settings(
        loop_registry, lake_uri=str(lake), decision_flush_seconds=0.2, max_outcomes=10
    )
    batch = [
        _outcome("b-1", "d-1", 1, "declined", request_id="rq-1"),
        _outcome("b-1", "d-2", 2, "accepted"),
        _outcome("b-1", "d-2", 2, "completed", stage="trip"),
    ]
    with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url) as c:
        first = c.post("/v1/outcomes", json={"outcomes": batch})
        assert first.status_code == 200, first.text
        assert first.json() == {"received": 3, "accepted": 3, "duplicates": 0}
        again = c.post("/v1/outcomes", json={"outcomes": [*batch, batch[0]]})
        assert again.status_code == 200
        assert again.json() == {"received": 4, "accepted": 0, "duplicates": 4}
        # The same key with another outcome: 409 naming it, nothing of the batch stored.
        clash = c.post(
            "/v1/outcomes",
            json={"outcomes": [_outcome("b-2", "d-7", 1), _outcome("b-1", "d-1", 1, "accepted")]},
        )
        assert clash.status_code == 409, clash.text
        err = clash.json()["error"]
        assert err["code"] == "outcome_conflict"
        assert err["details"][0]["loc"] == ["outcomes", 1, "outcome"]
        assert "'declined'" in err["details"][0]["msg"]
        bad = {
            "wrong outcome for the stage": (
                [_outcome("b-3", "d-1", 1, "completed")],
                ["outcomes", 0, "outcome"],
            ),
            "unknown stage": (
                [_outcome("b-3", "d-1", 1, stage="pickup")],
                ["outcomes", 0, "stage"],
            ),
            "position 0": ([_outcome("b-3", "d-1", 0)], ["outcomes", 0, "position"]),
            "unknown city": (
                [{**_outcome("b-3", "d-1", 1), "city": "atlantis"}],
                ["outcomes", 0, "city"],
            ),
            "no offset": (
                [{**_outcome("b-3", "d-1", 1), "occurred_at": "2026-11-27T08:16:00"}],
                ["outcomes", 0, "occurred_at"],
            ),
            "missing driver": (
                [{k: v for k, v in _outcome("b-3", "d-1", 1).items() if k != "driver_id"}],
                ["outcomes", 0, "driver_id"],
            ),
            "too many": ([_outcome(f"b-{k}", "d-1", 1) for k in range(11)], ["outcomes"]),
        }
        for what, (outcomes, loc) in bad.items():
            r = c.post("/v1/outcomes", json={"outcomes": outcomes})
            assert r.status_code == 422, (what, r.text)
            assert r.json()["error"]["details"][0]["loc"] == loc, (what, r.text)
        assert c.post("/v1/outcomes", json={"outcomes": []}).status_code == 422
    stored = serving_log.read_log(lake, "outcomes", "jakarta").to_pylist()
    keys = sorted(
        (r["booking_id"], r["driver_id"], r["position"], r["stage"], r["outcome"]) for r in stored
    )
    assert keys == [
        ("b-1", "d-1", 1, "offer", "declined"),
        ("b-1", "d-2", 2, "offer", "accepted"),
        ("b-1", "d-2", 2, "trip", "completed"),
    ]
    # Stored once, not only read once: one published row per key.
    files = [f for f in _published(lake) if "outcomes" in f.parts]
    assert sum(pq.read_table(f).num_rows for f in files) == 3
    assert {r["request_id"] for r in stored} == {"rq-1", None}


def test_a_full_queue_and_an_unwritable_lake_never_fail_an_answer(
    loop_registry: Registered, tmp_path: Path
) -> None:
    _set_traffic(loop_registry, **{conventions.CHALLENGER_SHARE_TAG: None})
    # Queue of one record, flushed only at shutdown: every answer after the first is dropped.
    lake = tmp_path / "lake"
    settings = serve_settings(
        loop_registry, lake_uri=str(lake), decision_queue_size=1, decision_flush_seconds=3600
    )
    with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url) as c:
        for k in range(6):
            assert c.post("/v1/rank", json=_booking(k)).status_code == 200
        assert (
            _metric(
                server.url, "matchmaking_log_dropped_rows", table="decisions", reason="queue_full"
            )
            == 5
        )
        full = c.post("/v1/outcomes", json={"outcomes": [_outcome("b-1", "d-1", 1)]})
        assert full.status_code == 503 and full.headers["retry-after"] == "1"
    assert len(serving_log.read_log(lake, "decisions", "jakarta")["request_id"].unique()) == 1
    # A lake that cannot be written (a file where the directory should be).
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("x")
    settings = serve_settings(loop_registry, lake_uri=str(blocked), decision_flush_seconds=0.1)
    with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url) as c:
        for k in range(4):
            assert c.post("/v1/rank", json=_booking(k)).status_code == 200
        _wait(
            lambda: (
                _metric(
                    server.url,
                    "matchmaking_log_dropped_rows",
                    table="decisions",
                    reason="lake_error",
                )
                >= 16
            ),
            "the failed flush counted",
        )
        assert c.post("/v1/rank", json=_booking(9)).status_code == 200  # still answering
        assert _metric(server.url, "matchmaking_log_rows", table="decisions") == 0


@pytest.mark.slow  # a real `matchmaking serve` process (tens of seconds to start)
def test_a_killed_service_leaves_only_whole_files(
    loop_registry: Registered, tmp_path: Path
) -> None:
    """SIGKILL mid-traffic: what was published reads back whole; the restarted service logs on."""
    lake = tmp_path / "lake"
    port = free_port()
    env = {
        **os.environ,
        "MATCHMAKING_SERVE_TRACKING_URI": loop_registry.uri,
        "MATCHMAKING_SERVE_MODEL_NAME_PREFIX": loop_registry.prefix,
        "MATCHMAKING_SERVE_HOT_CITIES": "jakarta",
        "MATCHMAKING_SERVE_PORT": str(port),
        "MATCHMAKING_SERVE_COMPILE_FORESTS": "false",
        "MATCHMAKING_SERVE_LAKE_URI": str(lake),
        "MATCHMAKING_SERVE_DECISION_FLUSH_SECONDS": "0.05",
        "MATCHMAKING_SERVE_ACCESS_LOG": "false",
    }

    def start() -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [str(MATCHMAKING), "serve"],
            env=env,
            cwd=tmp_path,
            text=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_for_200(proc, f"http://127.0.0.1:{port}/readyz", timeout_s=120.0)
        return proc

    proc = start()
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url) as c:
            for k in range(150):
                assert c.post("/v1/rank", json=_booking(k, n=20)).status_code == 200
        os.kill(proc.pid, signal.SIGKILL)  # mid-flush, likely: flushes every 50 ms
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    before = serving_log.read_log(lake, "decisions", "jakarta")
    assert before.num_rows > 0
    for path in _published(lake):
        pq.read_table(path)  # every published file is whole
    # Restarted (in process here: the same app, the same lake), it logs on beside them.
    settings = serve_settings(loop_registry, lake_uri=str(lake), decision_flush_seconds=0.2)
    with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url) as c:
        r = c.post("/v1/rank", json=_booking(500), headers={"X-Request-ID": "after"})
        assert r.status_code == 200
    after = serving_log.read_log(lake, "decisions", "jakarta")
    assert "after" in after["request_id"].to_pylist()
    assert after.num_rows == before.num_rows + 4
    for path in _published(lake):
        pq.read_table(path)


# -- challengers and exploration from registry tags -------------------------------------------


@pytest.fixture(scope="module")
def loop_live(
    loop_registry: Registered, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerThread, Path]]:
    _set_traffic(
        loop_registry,
        **{
            conventions.CHALLENGER_SHARE_TAG: None,
            conventions.CHALLENGER_MODE_TAG: None,
            conventions.EXPLORATION_TAG: None,
        },
    )
    lake = tmp_path_factory.mktemp("loop-lake")
    settings = serve_settings(loop_registry, lake_uri=str(lake), decision_flush_seconds=0.2)
    with ServerThread(create_app(settings)) as server:
        yield server, lake


def _share_gauge(url: str, mode: str) -> float | None:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("matchmaking_challenger_share{") and f'mode="{mode}"' in line:
            return float(line.rpartition(" ")[2])
    return None


def test_challenger_share_and_shadow_follow_registry_tags_without_restart(
    loop_live: tuple[ServerThread, Path], loop_registry: Registered
) -> None:
    server, lake = loop_live
    champion, challenger = loop_registry.versions["jakarta"]
    bookings = [_booking(1000 + k, n=4) for k in range(300)]
    with httpx.Client(base_url=server.url) as c:
        # No share tag: the champion answers every booking.
        greedy = {b["booking"]["booking_id"]: c.post("/v1/rank", json=b).json() for b in bookings}
        assert {a["arm"] for a in greedy.values()} == {"champion"}
        assert {a["version"] for a in greedy.values()} == {champion}

        share = 0.3
        _set_traffic(loop_registry, **{conventions.CHALLENGER_SHARE_TAG: str(share)})
        _wait(lambda: _share_gauge(server.url, "split") == share, "the split share picked up")
        split = {b["booking"]["booking_id"]: c.post("/v1/rank", json=b).json() for b in bookings}
        arms = {bid: a["arm"] for bid, a in split.items()}
        n = len(arms)
        got = sum(arm == "challenger" for arm in arms.values())
        assert abs(got - n * share) <= 4.5 * math.sqrt(n * share * (1 - share)), got
        for bid, answer in split.items():
            expected = "challenger" if policy.booking_hash(bid) < share else "champion"
            assert answer["arm"] == expected
            assert answer["version"] == (challenger if expected == "challenger" else champion)
        assert _metric(server.url, "matchmaking_answers", city="jakarta", arm="challenger") == got

        _set_traffic(loop_registry, **{conventions.CHALLENGER_MODE_TAG: "shadow"})
        _wait(lambda: _share_gauge(server.url, "shadow") == share, "shadow mode picked up")
        shadowed = {
            b["booking"]["booking_id"]: c.post(
                "/v1/rank", json=b, headers={"X-Request-ID": f"sh-{b['booking']['booking_id']}"}
            ).json()
            for b in bookings
        }
    # Shadow never changes an answer: the same as with no challenger at all.
    strip = lambda a: {k: v for k, v in a.items() if k != "request_id"}  # noqa: E731
    assert {bid: strip(a) for bid, a in shadowed.items()} == {
        bid: strip(a) for bid, a in greedy.items()
    }

    # ... but the challenger scored its share, logged as not served.
    def shadow_rows() -> list[dict[str, Any]]:
        rows = serving_log.read_log(lake, "decisions", "jakarta").to_pylist()
        return [r for r in rows if r["request_id"].startswith("sh-") and not r["served"]]

    expected = {bid for bid in bookings_ids(bookings) if policy.booking_hash(bid) < share}
    _wait(lambda: {r["booking_id"] for r in shadow_rows()} == expected, "the shadow rows logged")
    rows = shadow_rows()
    assert {(r["arm"], r["model_version"]) for r in rows} == {("shadow", challenger)}
    assert len(rows) == 4 * len(expected)


def bookings_ids(bookings: list[dict[str, Any]]) -> list[str]:
    return [b["booking"]["booking_id"] for b in bookings]


def test_exploration_from_a_registry_tag_samples_with_exact_propensities(
    loop_live: tuple[ServerThread, Path], loop_registry: Registered
) -> None:
    server, _ = loop_live
    _set_traffic(
        loop_registry,
        **{conventions.CHALLENGER_SHARE_TAG: None, conventions.EXPLORATION_TAG: "1.5"},
    )
    body = _booking(7, n=5)
    with httpx.Client(base_url=server.url) as c:
        _wait(
            lambda: c.post("/v1/rank", json=body).json()["policy"] == "plackett-luce",
            "the exploration tag picked up",
        )
        answers = [
            c.post("/v1/rank", json=body, headers={"X-Request-ID": f"ex-{k}"}).json()
            for k in range(300)
        ]
        _set_traffic(loop_registry, **{conventions.EXPLORATION_TAG: "0"})
        _wait(lambda: c.post("/v1/rank", json=body).json()["policy"] == "greedy", "exploration off")
    assert {(a["arm"], a["temperature"]) for a in answers} == {("champion", 1.5)}
    # first_propensity of a driver does not depend on the draw; the draws follow it.
    first_p: dict[str, float] = {}
    for a in answers:
        for cand in a["candidates"]:
            first_p.setdefault(cand["driver_id"], cand["first_propensity"])
            assert cand["first_propensity"] == pytest.approx(first_p[cand["driver_id"]])
        assert a["candidates"][0]["propensity"] == pytest.approx(
            first_p[a["candidates"][0]["driver_id"]]
        )
        assert a["candidates"][-1]["propensity"] == pytest.approx(1.0)
    assert sum(first_p.values()) == pytest.approx(1.0)
    n = len(answers)
    for driver, p in first_p.items():
        got = sum(a["candidates"][0]["driver_id"] == driver for a in answers)
        assert abs(got - n * p) <= 4.5 * math.sqrt(n * p * (1 - p)) + 1, (driver, got, n * p)
    assert len({a["candidates"][0]["driver_id"] for a in answers}) > 1
