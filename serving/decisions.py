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

import itertools
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from matchmaking.features.core import FloatArray
from matchmaking.lake.serving_log import write_log
from matchmaking.lake.storage import Location
from matchmaking.schema import DECISIONS, OUTCOMES
from serving.metrics import Metrics
from serving.scoring import Ranked

logger = logging.getLogger(__name__)

WARN_EVERY_S = 30.0


#: The answer's values a ranked decision keeps (``Decision.ranking``).
ANSWER_KEYS = ("booking_id", "city", "model", "version", "model_scope", "policy", "temperature")


@dataclass(frozen=True)
class Decision:
    """One answer to log: the response body (never mutated after it is answered), or only its
    ``ANSWER_KEYS`` beside ``ranked``, and what the body does not say."""

    endpoint: str  # "rank" or "match"
    request_id: str
    decided_at: datetime
    body: dict[str, Any]
    arm: str
    served: bool = True
    # The served order as arrays (``scoring.rank_answer``): cheaper to log than the body's
    # candidate dicts. None: read the body (match, fallback).
    ranked: Ranked | None = None

    @classmethod
    def ranking(
        cls,
        request_id: str,
        decided_at: datetime,
        body: dict[str, Any],
        arm: str,
        ranked: Ranked,
        served: bool = True,
    ) -> Decision:
        """A model's rank answer, holding its ``ANSWER_KEYS`` and the arrays, not the body:
        the body's candidate dicts (about 20 kB an answer at 50 candidates) are freed with the
        response instead of piling up until the next flush and being freed there in one burst
        that holds the GIL."""
        kept = {key: body[key] for key in ANSWER_KEYS}
        return cls("rank", request_id, decided_at, kept, arm, served, ranked)


#: A shadow scoring to run on the writer thread: returns the shadow's Decision, or None.
Shadow = Callable[[], Decision | None]


#: One ranked booking of an answer as the queue holds it until the flush: (request id, decided
#: at, booking id, the answer's ``_SHARED`` values in that order, the driver ids joined by
#: ``_SEPARATOR`` (as a tuple when one holds it), the number of ranked candidates, (score,
#: eta, first propensity, propensity) arrays). A plain tuple of strings, numbers, a datetime
#: and arrays, none of which the garbage collector tracks, so it stops tracking the tuple too
#: (it never does for a tuple subclass such as a NamedTuple). A flush interval of answers held
#: as ``Decision``s (a dataclass, a dict, a ``Ranked`` and a list each) sat in the oldest
#: generation, and every full collection that the request path's garbage triggered walked
#: all of them.
Compact = tuple[
    str, datetime, str, tuple[Any, ...], str | tuple[str, ...], int, tuple[FloatArray, ...]
]


def _compact(
    d: Decision, booking_id: str, drivers: list[str], values: tuple[FloatArray, ...]
) -> Compact:
    b = d.body
    shared = (  # in _SHARED's order
        b["city"],
        d.endpoint,
        b["model"],
        b["version"],
        b["model_scope"],
        d.arm,
        d.served,
        b["policy"],
        b["temperature"],
    )
    joined = _SEPARATOR.join(drivers)
    splittable = joined.count(_SEPARATOR) == len(drivers) - 1
    ids = joined if splittable else tuple(drivers)
    return (d.request_id, d.decided_at, booking_id, shared, ids, len(drivers), values)


def compact(d: Decision) -> Decision | Compact:
    """A model's rank answer as the queue holds it (``Compact``); any other record as it is
    (a match or fallback answer is read from its body at the flush)."""
    r = d.ranked
    if r is None:
        return d
    values = (r.score, r.eta_seconds, r.first_propensity, r.propensity)
    return _compact(d, d.body["booking_id"], r.driver_id, values)


#: DECISIONS columns whose value is the same for most answers of a flush (the city, the model
#: and its version, the arm, the policy): gathered as one key per answer, stored once per key.
_SHARED = (
    "city",
    "endpoint",
    "model_name",
    "model_version",
    "model_scope",
    "arm",
    "served",
    "policy",
    "temperature",
)
#: Joins one answer's driver ids into one string, split again by arrow: a C-level pass instead
#: of one Python object per ranked candidate (a flush whose driver ids hold it takes them one
#: by one).
_SEPARATOR = "\x1f"


@dataclass
class _Segments:
    """What ``decisions_table`` gathers: one segment per ranked booking (a rank answer; each
    booking a match answer assigned), ``counts[i]`` rows each."""

    keys: dict[tuple[Any, ...], int] = field(default_factory=dict)  # _SHARED values -> code
    key_codes: list[int] = field(default_factory=list)
    request_id: list[str] = field(default_factory=list)
    booking_id: list[str] = field(default_factory=list)
    decided_at: list[datetime] = field(default_factory=list)
    drivers: list[str] = field(default_factory=list)  # each segment's ids, joined by _SEPARATOR
    counts: list[int] = field(default_factory=list)
    values: list[tuple[FloatArray, ...]] = field(default_factory=list)  # score, eta, first, prop
    lists: list[list[str]] = field(default_factory=list)  # each ids as given (unsplittable)
    unsplittable: bool = False  # a driver id holds _SEPARATOR: take them from ``lists``

    def driver_column(self) -> pa.Array:
        if self.unsplittable:
            return pa.array(list(itertools.chain.from_iterable(self.lists)), pa.string())
        return pc.list_flatten(pc.split_pattern(pa.array(self.drivers, pa.string()), _SEPARATOR))

    def add(self, c: Compact) -> None:
        request_id, decided_at, booking_id, shared, drivers, rows, values = c
        if not rows:
            return
        code = self.keys.get(shared)
        if code is None:
            code = self.keys[shared] = len(self.keys)
        if isinstance(drivers, str):
            self.drivers.append(drivers)
            if self.unsplittable:
                self.lists.append(drivers.split(_SEPARATOR))
        else:  # a driver id holds the separator: every id of the flush from ``lists``
            if not self.unsplittable:
                self.unsplittable = True
                self.lists = [joined.split(_SEPARATOR) for joined in self.drivers]
            self.drivers.append("")
            self.lists.append(list(drivers))
        self.key_codes.append(code)
        self.request_id.append(request_id)
        self.booking_id.append(booking_id)
        self.decided_at.append(decided_at)
        self.counts.append(rows)
        self.values.append(values)


def _body_values(rows: list[dict[str, Any]], ranked: bool) -> tuple[FloatArray, ...]:
    """(score, eta, first, prop) of candidate dicts (fallback and match answers)."""
    n = len(rows)
    score = np.array([math.nan if r["score"] is None else r["score"] for r in rows], np.float64)
    eta = np.array([r["eta_seconds"] for r in rows], np.float64)
    if not ranked:  # a match assignment is offered alone: certain
        return score, eta, np.ones(n), np.ones(n)
    first = np.array([r["first_propensity"] for r in rows], np.float64)
    prop = np.array([r["propensity"] for r in rows], np.float64)
    return score, eta, first, prop


def decisions_table(records: Sequence[Decision | Compact]) -> pa.Table:
    """The ``DECISIONS`` rows of some answers: one per ranked candidate (rank), one per
    assignment with a driver (match).

    The writer thread shares the GIL with the event loop, so its Python work is one small
    step per answer: values repeated over an answer's candidates (request and booking id,
    time) and values shared by many answers (``_SHARED``) become dictionary columns, never one
    Python object per row, and an answer's driver ids are split by arrow from one joined
    string. ``write_log`` publishes the dictionary columns as they are (parquet's own
    encoding); readers get plain strings."""
    seg = _Segments()
    for d in records:
        if isinstance(d, tuple):  # the fast path: the rank answers of models, as queued
            seg.add(d)
            continue
        b = d.body
        if d.ranked is not None:
            seg.add(compact(d))  # type: ignore[arg-type]
        elif d.endpoint == "match":
            for a in b["assignments"]:
                if a["driver_id"] is not None:
                    one = _body_values([a], False)
                    seg.add(_compact(d, a["booking_id"], [a["driver_id"]], one))
        else:
            rows = b["candidates"]
            ids = [c["driver_id"] for c in rows]
            seg.add(_compact(d, b["booking_id"], ids, _body_values(rows, True)))
    if not seg.counts:
        return DECISIONS.empty_table()
    counts = np.asarray(seg.counts, dtype=np.int64)
    total = int(counts.sum())
    of_segment = pa.array(np.repeat(np.arange(len(counts), dtype=np.int32), counts))
    of_key = pa.array(np.repeat(np.asarray(seg.key_codes, dtype=np.int32), counts))
    columns: dict[str, pa.Array] = {}
    for name, per_key in zip(_SHARED, zip(*seg.keys, strict=True), strict=True):
        kind = DECISIONS.field(name).type
        if not pa.types.is_string(kind):
            columns[name] = pa.array(per_key, kind).take(of_key)
            continue
        # Each distinct value once in the dictionary (readers may group on it); a null in the
        # indices, never in the dictionary (parquet's rule).
        distinct: dict[str, int] = {}
        codes = [None if v is None else distinct.setdefault(v, len(distinct)) for v in per_key]
        indices = pa.array(codes, pa.int32()).take(of_key)
        columns[name] = pa.DictionaryArray.from_arrays(indices, pa.array(list(distinct), kind))
    for name, per_segment in (("request_id", seg.request_id), ("booking_id", seg.booking_id)):
        labels = pa.array(per_segment, pa.string())
        columns[name] = pa.DictionaryArray.from_arrays(of_segment, labels)
    columns["decided_at"] = pa.array(seg.decided_at, DECISIONS.field("decided_at").type).take(
        of_segment
    )
    columns["driver_id"] = seg.driver_column()
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    columns["position"] = pa.array((np.arange(total) - starts + 1).astype(np.int16))
    names = ("score", "eta_seconds", "first_propensity", "propensity")
    for k, name in enumerate(names):
        column = np.concatenate([v[k] for v in seg.values]) if seg.values else np.empty(0)
        # NaN marks a missing score (fallback answers): null in the log.
        mask = np.isnan(column) if name == "score" else None
        columns[name] = pa.array(column, pa.float64(), mask=mask)
    return pa.table([columns[name] for name in DECISIONS.names], names=DECISIONS.names)


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
        self._decisions: deque[Decision | Compact | Shadow] = deque()
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
        self._decisions.append(compact(record) if isinstance(record, Decision) else record)
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
        records: list[Decision | Compact] = []
        while self._decisions:
            item = self._decisions.popleft()
            if isinstance(item, Decision | tuple):
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
