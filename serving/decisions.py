"""The decision and outcome log: a background writer that never blocks or fails a request.

The request path appends one record per answer (or per outcome batch) to a bounded in-memory
queue (``decision_queue_size``) and returns; a writer thread wakes every
``decision_flush_seconds`` (and at shutdown), turns the queued records into rows of the
``DECISIONS`` / ``OUTCOMES`` contracts and publishes them with ``lake.serving_log.write_log``
(one new file per city, date and hour, written whole). Shadow scorings (a challenger in shadow
mode) are computed on this thread too, so they never delay an answer.

Nothing here raises into a request: a full queue drops the record, a lake that cannot be
written drops the flush's rows; both are counted in ``/metrics``
(``matchmaking_log_dropped_rows{table,reason}``) and logged as a warning at most once per
``WARN_EVERY_S``. Loss bound: a process killed without its shutdown (SIGKILL, OOM) loses what
was queued since the last flush, at most one flush interval of answers (and never more than the
queue holds); a clean shutdown (SIGTERM) flushes everything queued.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from matchmaking.features.core import FloatArray
from matchmaking.lake.serving_log import write_log
from matchmaking.lake.storage import Location
from matchmaking.schema import DECISIONS, OUTCOMES
from serving.metrics import Metrics
from serving.scoring import Ranked

logger = logging.getLogger(__name__)

WARN_EVERY_S = 30.0


@dataclass(frozen=True)
class Decision:
    """One answer to log: the response body (never mutated after it is answered) and what the
    body does not say."""

    endpoint: str  # "rank" or "match"
    request_id: str
    decided_at: datetime
    body: dict[str, Any]
    arm: str
    served: bool = True
    # The served order as arrays (``scoring.rank_answer``): cheaper to log than the body's
    # candidate dicts. None: read the body (match, fallback).
    ranked: Ranked | None = None


#: A shadow scoring to run on the writer thread: returns the shadow's Decision, or None.
Shadow = Callable[[], Decision | None]


#: DECISIONS columns that hold one value per answer (repeated over its candidates).
_PER_ANSWER = (
    "request_id",
    "city",
    "decided_at",
    "endpoint",
    "model_name",
    "model_version",
    "model_scope",
    "arm",
    "served",
    "policy",
    "temperature",
)


def decisions_table(records: list[Decision]) -> pa.Table:
    """The ``DECISIONS`` rows of some answers: one per ranked candidate (rank), one per
    assignment with a driver (match). Columnar: the per-answer values are gathered once per
    answer and repeated by arrow, the per-candidate ones read with one pass per column (the
    writer thread shares the GIL with the event loop, so its Python work is kept small)."""
    per_answer: dict[str, list[Any]] = {name: [] for name in _PER_ANSWER}
    counts: list[int] = []
    booking: list[str] = []
    driver: list[str] = []
    position: list[int] = []
    score: list[float | None] = []
    eta: list[float] = []
    first: list[float] = []
    prop: list[float] = []
    arrays: list[tuple[FloatArray, ...]] = []  # (position, score, eta, first, prop) per answer
    for d in records:
        b = d.body
        if d.ranked is not None:  # the fast path: the rank answers of models
            if score or position:  # keep list and array rows in order: flush the lists first
                arrays.append(_lists_as_arrays(position, score, eta, first, prop))
            r = d.ranked
            n = len(r.driver_id)
            booking += [b["booking_id"]] * n
            driver += r.driver_id
            arrays.append(
                (
                    np.arange(1, n + 1, dtype=np.float64),
                    r.score,
                    r.eta_seconds,
                    r.first_propensity,
                    r.propensity,
                )
            )
        elif d.endpoint == "match":
            rows = [a for a in b["assignments"] if a["driver_id"] is not None]
            n = len(rows)
            booking += [a["booking_id"] for a in rows]
            position += [1] * n
            first += [1.0] * n
            prop += [1.0] * n
        else:
            rows = b["candidates"]
            n = len(rows)
            booking += [b["booking_id"]] * n
            position += [c["rank"] for c in rows]
            first += [c["first_propensity"] for c in rows]
            prop += [c["propensity"] for c in rows]
        if d.ranked is None:
            driver += [r["driver_id"] for r in rows]
            score += [r["score"] for r in rows]
            eta += [r["eta_seconds"] for r in rows]
        counts.append(n)
        for name, value in (
            ("request_id", d.request_id),
            ("city", b["city"]),
            ("decided_at", d.decided_at),
            ("endpoint", d.endpoint),
            ("model_name", b["model"]),
            ("model_version", b["version"]),
            ("model_scope", b["model_scope"]),
            ("arm", d.arm),
            ("served", d.served),
            ("policy", b["policy"]),
            ("temperature", b["temperature"]),
        ):
            per_answer[name].append(value)
    repeat = pa.array(np.repeat(np.arange(len(counts), dtype=np.int64), counts))
    columns: dict[str, pa.Array] = {
        name: pa.array(values, DECISIONS.field(name).type).take(repeat)
        for name, values in per_answer.items()
    }
    if score or position:
        arrays.append(_lists_as_arrays(position, score, eta, first, prop))
    columns["booking_id"] = pa.array(booking, pa.string())
    columns["driver_id"] = pa.array(driver, pa.string())
    names = ("position", "score", "eta_seconds", "first_propensity", "propensity")
    for k, name in enumerate(names):
        kind = DECISIONS.field(name).type
        values = np.concatenate([a[k] for a in arrays]) if arrays else np.empty(0)
        # NaN marks a missing score (fallback answers): null in the log.
        mask = np.isnan(values) if name == "score" else None
        columns[name] = pa.array(values, pa.float64(), mask=mask).cast(kind)
    return pa.table([columns[name] for name in DECISIONS.names], schema=DECISIONS)


def _lists_as_arrays(
    position: list[int],
    score: list[float | None],
    eta: list[float],
    first: list[float],
    prop: list[float],
) -> tuple[FloatArray, ...]:
    """The rows read from bodies so far, as arrays (the lists emptied)."""
    out = (
        np.array(position, dtype=np.float64),
        np.array([math.nan if s is None else s for s in score], dtype=np.float64),
        np.array(eta, dtype=np.float64),
        np.array(first, dtype=np.float64),
        np.array(prop, dtype=np.float64),
    )
    for values in (position, score, eta, first, prop):
        values.clear()
    return out


class RecentKeys:
    """The outcome keys this process stored lately (at most ``size``, oldest forgotten first):
    a repeat is answered without storing it again."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._keys: OrderedDict[tuple[str, str, int, str], str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, int, str]) -> str | None:
        with self._lock:
            return self._keys.get(key)

    def add(self, items: list[tuple[tuple[str, str, int, str], str]]) -> None:
        with self._lock:
            for key, outcome in items:
                self._keys[key] = outcome
                self._keys.move_to_end(key)
            while len(self._keys) > self.size:
                self._keys.popitem(last=False)

    def forget(self, keys: list[tuple[str, str, int, str]]) -> None:
        """Drop keys whose rows were not stored (a failed flush), so a retry is stored."""
        with self._lock:
            for key in keys:
                self._keys.pop(key, None)


class LogWriter:
    """The background writer of one app (``start`` / ``close`` from the lifespan)."""

    def __init__(
        self, root: Location, metrics: Metrics, queue_size: int, flush_seconds: float
    ) -> None:
        self.root = root
        self.metrics = metrics
        self.queue_size = queue_size
        self.flush_seconds = flush_seconds
        self._decisions: deque[Decision | Shadow] = deque()
        self._outcomes: deque[list[dict[str, Any]]] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_warning = -WARN_EVERY_S
        self._flush_lock = threading.Lock()
        self.on_outcomes_lost: Callable[[list[dict[str, Any]]], None] | None = None

    # -- request path (event loop): never blocks, never raises ------------------------------

    def decision(self, record: Decision | Shadow) -> bool:
        """Queue an answer (or a shadow scoring); False (counted) when the queue is full."""
        if len(self._decisions) + len(self._outcomes) >= self.queue_size:
            self.metrics.log_dropped.labels("decisions", "queue_full").inc()
            self._warn("decision log queue full (%d records): dropping records", self.queue_size)
            return False
        self._decisions.append(record)
        return True

    def outcomes(self, rows: list[dict[str, Any]]) -> bool:
        """Queue a batch of outcome rows; False (nothing queued) when the queue is full."""
        if len(self._decisions) + len(self._outcomes) >= self.queue_size:
            self.metrics.log_dropped.labels("outcomes", "queue_full").inc(len(rows))
            self._warn("decision log queue full (%d records): refusing outcomes", self.queue_size)
            return False
        self._outcomes.append(rows)
        return True

    @property
    def queued(self) -> int:
        return len(self._decisions) + len(self._outcomes)

    # -- the writer thread -----------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the thread after a last flush of everything queued."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self.flush()  # whatever arrived after the thread's last flush

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        """Publish every queued record (decisions, then outcomes); never raises."""
        with self._flush_lock:
            self.metrics.log_queue.set(self.queued)
            self._flush_decisions()
            self._flush_outcomes()
            self.metrics.log_queue.set(self.queued)

    def _flush_decisions(self) -> None:
        records: list[Decision] = []
        while self._decisions:
            item = self._decisions.popleft()
            if isinstance(item, Decision):
                records.append(item)
                continue
            try:
                shadow = item()
            except Exception:  # a failed shadow scoring never affects the log of the rest
                self.metrics.log_dropped.labels("decisions", "shadow_error").inc()
                logger.exception("shadow scoring failed")
                continue
            if shadow is not None:
                records.append(shadow)
        if not records:
            return
        try:
            table = decisions_table(records)
        except Exception:  # a record that breaks the contract: a bug, never a failed answer
            self.metrics.log_dropped.labels("decisions", "invalid").inc(len(records))
            logger.exception("decision records could not be tabled; dropped")
            return
        self._write("decisions", table)

    def _flush_outcomes(self) -> None:
        rows: list[dict[str, Any]] = []
        while self._outcomes:
            rows.extend(self._outcomes.popleft())
        if not rows:
            return
        now = datetime.now(UTC)
        for r in rows:
            r["received_at"] = now
        columns = {name: [r[name] for r in rows] for name in OUTCOMES.names}
        table = pa.table(columns, schema=OUTCOMES)
        if not self._write("outcomes", table) and self.on_outcomes_lost is not None:
            self.on_outcomes_lost(rows)

    def _write(self, table: str, rows: pa.Table) -> bool:
        n = rows.num_rows
        if n == 0:
            return True
        started = time.perf_counter()
        try:
            write_log(self.root, table, rows)
        except Exception as exc:  # a lake outage: drop, count, keep answering
            self.metrics.log_dropped.labels(table, "lake_error").inc(n)
            self._warn("could not write %d %s rows to the lake: %s", n, table, exc)
            return False
        self.metrics.log_rows.labels(table).inc(n)
        self.metrics.log_flush_seconds.observe(time.perf_counter() - started)
        return True

    def _warn(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY_S:
            self._last_warning = now
            logger.warning(msg + " (this warning: at most every %gs)", *args, WARN_EVERY_S)
