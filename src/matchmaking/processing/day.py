"""One city-day at a time: a raw day validated into its summary, then its feature partition.

- ``ensure_summary(day)``: the day's raw partitions validated; per driver, the day's offers,
  acceptances and offered ETA minutes (``features.batch.daily_summary``) and the quarantine.
  Keyed on the day's raw files, the roster, the code and the market's parameters.
- ``ensure_day(day)``: the day's feature rows. History comes from the summaries of the 28
  days before it (never from their raw rows); keyed on the summary key and those summaries'
  digests. Its ``features.parquet`` is written by the out-of-core engine (``engine``).

Both are published once and reused (a rerun of a day with the same inputs does no work, and a
forced rerun writes the same bytes: same digest). A day with too many bad rows fails alone:
the days before it stay published, and the days whose history needs it fail naming it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from matchmaking import lake
from matchmaking.config import Settings
from matchmaking.errors import DataQualityError, StorageError
from matchmaking.features.batch import (
    BOOKING_COLUMNS,
    DRIVER_COLUMNS,
    daily_summary,
    driver_snapshot,
    feature_frame,
    offer_log,
)
from matchmaking.features.history import HISTORY_DAYS
from matchmaking.lake import datasets, storage
from matchmaking.lake.datasets import (
    FEATURES_FILE,
    MANIFEST_FILE,
    QUARANTINE_FILE,
    SUMMARY_FILE,
)
from matchmaking.lake.storage import Location, LocationLike
from matchmaking.markets import Market, get_market
from matchmaking.processing import engine as eng
from matchmaking.processing.inputs import history_from
from matchmaking.processing.validate import ValidationResult, validate
from matchmaking.progress import SILENT, Progress
from matchmaking.schema import DRIVERS, FEATURE_NAMES, RAW_TABLES

logger = logging.getLogger(__name__)

# The sources whose change changes a day's output: a code change reprocesses the days.
_CODE_PACKAGES = ("features", "processing")
_CODE_MODULES = ("schema.py",)


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sha256 of the source of the feature and processing code and the data contract."""
    root = Path(__file__).resolve().parents[1]
    files = [p for pkg in _CODE_PACKAGES for p in sorted((root / pkg).glob("*.py"))]
    files += [root / m for m in _CODE_MODULES]
    h = hashlib.sha256()
    for path in files:
        h.update(
            f"{path.relative_to(root)}:{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode()
        )
    return h.hexdigest()


def engine_config(settings: Settings) -> eng.EngineConfig:
    return eng.EngineConfig(
        memory_limit=settings.process_memory_limit,
        temp_dir=settings.process_temp_dir,
        threads=settings.process_threads or len(os.sched_getaffinity(0)),
        bucket_rows=settings.process_bucket_rows,
        batch_rows=settings.process_batch_rows,
    )


@dataclass(frozen=True)
class Summary:
    day: date
    location: Location
    manifest: dict[str, object]

    @property
    def digest(self) -> str:
        return str(self.manifest["summary_digest"])

    @property
    def bad_share(self) -> float:
        return float(self.manifest["bad_share"])  # type: ignore[arg-type]


@dataclass(frozen=True)
class Day:
    day: date
    location: Location
    manifest: dict[str, object]
    reused: bool

    @property
    def digest(self) -> str:
        return str(self.manifest["digest"])


def _raw_file(settings: Settings, city: str, day: date, table: str) -> Location:
    part = lake.partition_dir(settings.lake_dir, lake.RAW, city, day)
    return storage.join(part, f"{table}.parquet")


def _roster_file(settings: Settings, city: str) -> Location:
    return storage.join(lake.city_dir(settings.lake_dir, lake.RAW, city), lake.DRIVERS_FILE)


def _market_params(info: Market) -> dict[str, object]:
    return {
        "tz": info.tz,
        "centre": [info.lat, info.lng],
        "speed_kmh": list(info.speed_kmh),
        "history_days": HISTORY_DAYS,
    }


def summary_key(settings: Settings, city: str, day: date) -> str:
    """What a day's summary (and its validation) depends on: its raw files, the roster, the
    code and the market's parameters."""
    info = get_market(city)
    parts = {
        "city": city,
        "day": day.isoformat(),
        "roster": storage.digest(_roster_file(settings, city)),
        **{t: storage.digest(_raw_file(settings, city, day, t)) for t in sorted(RAW_TABLES)},
        "market": _market_params(info),
        "code": code_fingerprint(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _check_share(city: str, day: date, manifest: dict[str, object], max_bad_share: float) -> None:
    share = float(manifest["bad_share"])  # type: ignore[arg-type]
    if share > max_bad_share:
        raise DataQualityError(
            f"{city} {day}: {share:.1%} of the day's raw rows failed validation (limit "
            f"{max_bad_share:.1%}): {manifest['quarantine']}. Nothing was published for that "
            "day (nor for the days whose 28-day history needs it); inspect its quarantined "
            f"rows kept in {manifest.get('rejected', 'the rejected directory')} and fix the "
            "source, or raise --max-bad-share if they are expected"
        )


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", write_statistics=True)
    return bytes(sink.getvalue().to_pybytes())


class DayProcessor:
    """Summaries and feature partitions of one city, published under the lake's features."""

    def __init__(self, settings: Settings, city: str, max_bad_share: float) -> None:
        self.settings = settings
        self.city = city
        self.info = get_market(city)
        self.max_bad_share = max_bad_share
        self.config = engine_config(settings)
        self.available = lake.list_dates(settings.lake_dir, city)
        self._summaries: dict[date, Summary] = {}
        self._summary_tables: dict[date, pa.Table] = {}
        self._keys: dict[date, str] = {}
        self._roster: pd.DataFrame | None = None
        self._checked_roster: ValidationResult | None = None
        self._checked: set[date] = set()  # days whose raw partitions passed the footer check
        self.rejected_parent: Location | None = None  # where a rejected day's files go
        self.progress: Progress = SILENT

    # -- inputs ------------------------------------------------------------------------------

    def summary_key(self, day: date) -> str:
        if day not in self._keys:
            self._keys[day] = summary_key(self.settings, self.city, day)
        return self._keys[day]

    def roster(self) -> pd.DataFrame:
        if self._roster is None:
            self._roster = lake.read_drivers(self.settings.lake_dir, self.city).to_pandas()
        return self._roster

    def checked_roster(self) -> ValidationResult:
        """The roster validated (once per processor: every day of a window shares it)."""
        if self._checked_roster is None:
            self._checked_roster = validate(
                _no_rows("bookings"),
                _no_rows("candidates"),
                self.roster(),
                (self.info.lat, self.info.lng),
            )
        return self._checked_roster

    def history_days(self, day: date) -> list[date]:
        first = history_from(day, self.available)
        return [first + timedelta(days=i) for i in range((day - first).days)]

    def _require(self, days: list[date]) -> None:
        missing = [d for d in days if d not in set(self.available)]
        if missing:
            raise StorageError(
                f"raw/city={self.city} has no complete partition for "
                f"{lake.describe_days(missing)} under {self.settings.lake_dir}; generate them "
                f"(`matchmaking world generate --cities {self.city} --start {missing[0]} "
                f"--days {(missing[-1] - missing[0]).days + 1}`)"
            )
        # Each day's footers once per processor: a window's days share their history days.
        for d in days:
            if d not in self._checked:
                lake.check_partitions(self.settings.lake_dir, self.city, RAW_TABLES, d, d)
                self._checked.add(d)

    # -- summaries ---------------------------------------------------------------------------

    def ensure_summary(self, day: date, checked: eng.Checked | None = None) -> Summary:
        """The day's published summary, validating the day when it is not published yet."""
        if day in self._summaries:
            found = self._summaries[day]
            _check_share(self.city, day, found.manifest, self.max_bad_share)
            return found
        key = self.summary_key(day)
        parent = datasets.summary_parent(self.settings.features_dir, self.city, day)
        location = datasets.find_published(parent, key[:16])
        if location is None:
            self._require([day])
            if checked is None:
                with eng.engine(self.config) as e:
                    checked = self._validate(e, day, keep_clean=False)
            location = self._publish_summary(day, key, checked)
        summary = Summary(day, location, datasets.read_manifest(location))
        _check_share(self.city, day, summary.manifest, self.max_bad_share)
        self._summaries[day] = summary
        return summary

    def ensure_summaries(self, days: list[date]) -> list[Summary]:
        """``ensure_summary`` of each of ``days``, those not published yet validated
        concurrently (``EngineConfig.threads`` at a time) when each fits in one bucket (a day
        larger than that is validated alone, its memory bounded by the engine); a day that
        fails raises as it would in turn, the earliest first."""
        small = [d for d in days if self._to_validate(d) and self._fits_one_bucket(d)]
        done: dict[date, Future[Summary]] = {}
        if len(small) > 1 and self.config.threads > 1:
            self.checked_roster()  # validated once, before the threads share it
            with ThreadPoolExecutor(self.config.threads, "summary") as pool:
                done = {d: pool.submit(self.ensure_summary, d) for d in small}
        out = []
        for d in days:
            new = d not in self._summaries
            out.append(done[d].result() if d in done else self.ensure_summary(d))
            if new or d in done:
                self.progress.step(f"summary of {d}")
        return out

    def _to_validate(self, day: date) -> bool:
        """Whether ``ensure_summary(day)`` would validate the day (its summary not published
        for today's inputs; a raw file missing: not here, ``ensure_summary`` names it)."""
        if day in self._summaries:
            return False
        try:
            key = self.summary_key(day)
        except OSError:
            return False
        parent = datasets.summary_parent(self.settings.features_dir, self.city, day)
        return datasets.find_published(parent, key[:16]) is None

    def _fits_one_bucket(self, day: date) -> bool:
        """Whether the day's raw rows fit in one validation bucket (footers only); a day with
        a missing or broken file is not (its summary then fails alone, naming it)."""
        try:
            self._require([day])
            rows = sum(
                eng.num_rows(_raw_file(self.settings, self.city, day, t))
                for t in ("bookings", "candidates")
            )
        except (OSError, StorageError):
            return False
        return eng.bucket_count(self.config, rows) == 1

    def find_summary(self, day: date) -> Summary | None:
        """The day's summary when it is published for today's inputs (raw files, roster, code),
        else None; never validates anything (the planner's question: is this day done?)."""
        if day in self._summaries:
            return self._summaries[day]
        try:
            key = self.summary_key(day)
        except OSError:  # a raw file missing: not done (its task says what is missing)
            return None
        parent = datasets.summary_parent(self.settings.features_dir, self.city, day)
        location = datasets.find_published(parent, key[:16])
        if location is None:
            return None
        summary = Summary(day, location, datasets.read_manifest(location))
        if summary.bad_share > self.max_bad_share:
            return None
        self._summaries[day] = summary
        return summary

    def find_day(self, day: date) -> Day | None:
        """The day's feature partition when it is published for today's inputs (its summary
        and those of its history days published, the partition of that key published), else
        None; never builds anything."""
        if any(self.find_summary(d) is None for d in [*self.history_days(day), day]):
            return None
        parent = datasets.day_parent(self.settings.features_dir, self.city, day)
        location = datasets.find_published(parent, self.day_key(day)[:16])
        if location is None:
            return None
        return Day(day, location, datasets.read_manifest(location), reused=True)

    def missing_summaries(self, days: list[date]) -> list[date]:
        """Those of ``days`` whose summary is not published for today's inputs."""
        return [d for d in days if self.find_summary(d) is None]

    def _validate(self, e: eng.Engine, day: date, keep_clean: bool = True) -> eng.Checked:
        return e.validate_day(
            _raw_file(self.settings, self.city, day, "bookings"),
            _raw_file(self.settings, self.city, day, "candidates"),
            self.checked_roster(),
            (self.info.lat, self.info.lng),
            keep_clean,
        )

    def _publish_summary(self, day: date, key: str, checked: eng.Checked) -> Location:
        offers = offer_log(checked.offers, self.info.tz)
        summary = pa.Table.from_pandas(daily_summary(offers), preserve_index=False)
        quarantine = pa.concat_tables(
            [q for q in checked.quarantine if q.num_rows] or checked.quarantine[:1],
            promote_options="permissive",
        )
        files = {SUMMARY_FILE: _parquet_bytes(summary), QUARANTINE_FILE: _parquet_bytes(quarantine)}
        manifest: dict[str, object] = {
            "city": self.city,
            "day": day.isoformat(),
            "key": key,
            "summary_digest": hashlib.sha256(files[SUMMARY_FILE]).hexdigest(),
            "quarantine": dict(checked.counts),
            "bookings": checked.bookings,
            "candidates": checked.candidates,
            "total_rows": checked.total_rows,
            "bad_rows": checked.bad_rows,
            "bad_share": checked.bad_share,
        }
        parent = datasets.summary_parent(self.settings.features_dir, self.city, day)
        if checked.bad_share > self.max_bad_share:
            rejected = storage.join(
                self.rejected_parent or parent, f".rejected-{day}-{uuid.uuid4().hex}"
            )
            manifest["rejected"] = str(rejected)
            files[MANIFEST_FILE] = json.dumps(manifest, indent=2, sort_keys=True).encode()
            datasets.write_files(rejected, files)
            _check_share(self.city, day, manifest, self.max_bad_share)
        files[MANIFEST_FILE] = json.dumps(manifest, indent=2, sort_keys=True).encode()
        return datasets.publish(files, parent, key)

    def read_summaries(self, days: list[date]) -> pd.DataFrame:
        """The published summaries of ``days`` (each ensured first), concatenated."""
        tables = []
        for d in days:
            if d not in self._summary_tables:  # a window's days share their history days
                s = self.ensure_summary(d)
                self._summary_tables[d] = datasets.read_table(
                    storage.join(s.location, SUMMARY_FILE)
                )
            tables.append(self._summary_tables[d])
        if not tables:
            return daily_summary(offer_log(_no_offers(), self.info.tz))
        return pa.concat_tables(tables).to_pandas()

    # -- days --------------------------------------------------------------------------------

    def day_key(self, day: date) -> str:
        history = self.ensure_summaries(self.history_days(day))
        parts = {
            "summary": self.summary_key(day),
            "history": [[s.day.isoformat(), s.digest] for s in history],
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def ensure_days(self, days: list[date]) -> Iterator[Day]:
        """``ensure_day`` of each of ``days`` in turn; while one day's features are built, the
        next day's raw rows are validated beside it when that day is to be built and fits in
        one bucket (two days' clean rows held at most; a day in buckets is validated in turn,
        its memory bounded by the engine). A day that fails raises in its turn."""
        with ThreadPoolExecutor(1, "validate-ahead") as pool:
            ahead: Future[eng.Checked] | None = None
            for i, d in enumerate(days):
                checked, ahead = (ahead.result() if ahead else None), None
                following = days[i + 1] if i + 1 < len(days) else None

                def validate_next(following: date | None = following) -> None:
                    nonlocal ahead
                    if following is not None and self._to_build(following):
                        ahead = pool.submit(self._validate_alone, following)

                yield self.ensure_day(d, checked=checked, validated=validate_next)

    def _to_build(self, day: date) -> bool:
        """Whether ``ensure_day(day)`` would build the day (every summary its key needs is
        published) and the day fits in one bucket."""
        if not all(d in self._summaries for d in self.history_days(day)):
            return False
        parent = datasets.day_parent(self.settings.features_dir, self.city, day)
        if datasets.find_published(parent, self.day_key(day)[:16]) is not None:
            return False
        return self._fits_one_bucket(day)

    def _validate_alone(self, day: date) -> eng.Checked:
        """A one-bucket day validated with its clean rows kept (``Checked.clean``), outside
        any engine: it never opens a connection."""
        with eng.engine(self.config) as e:
            return self._validate(e, day)

    def ensure_day(
        self,
        day: date,
        force: bool = False,
        checked: eng.Checked | None = None,
        validated: Callable[[], None] | None = None,
    ) -> Day:
        """The day's published feature partition; built when missing (or when ``force``),
        from ``checked`` when its validation was done ahead (``ensure_days``). ``validated``
        is called once the day's summary is published (the next day's key is known then)."""
        self._require([day, *self.history_days(day)])
        key = self.day_key(day)
        parent = datasets.day_parent(self.settings.features_dir, self.city, day)
        location = None if force else datasets.find_published(parent, key[:16])
        if location is not None:
            self.ensure_summary(day)  # its bad share against this run's limit
            if validated is not None:
                validated()
            return Day(day, location, datasets.read_manifest(location), reused=True)
        history = self.read_summaries(self.history_days(day))
        with eng.engine(self.config) as e:
            self.progress.step(f"validating {day}")
            if checked is None:
                checked = self._validate(e, day)
            summary = self.ensure_summary(day, checked)
            if validated is not None:
                validated()
            self.progress.step(f"building features of {day}")
            table = driver_snapshot(checked.drivers, history, np.datetime64(day))
            table = table[["driver_id", *eng.HISTORY_COLUMNS]]

            def fill(directory: Location) -> None:
                written = eng.write_features(
                    storage.join(directory, FEATURES_FILE),
                    e.feature_batches(checked, table),
                    self.info.tz,
                    np.asarray(self.info.speed_kmh, dtype=np.float64),
                    np.datetime64(day),
                    self._empty(),
                )
                if written.outside_day:
                    logger.warning(
                        "%s %s: %d candidate rows are not of the partition's local day; left out",
                        self.city,
                        day,
                        written.outside_day,
                    )
                manifest = {
                    "city": self.city,
                    "day": day.isoformat(),
                    "key": key,
                    "digest": written.digest,
                    "rows": written.rows,
                    "offered_rows": written.offered_rows,
                    "outside_day_rows": written.outside_day,
                    "features": list(FEATURE_NAMES),
                    "summary": summary.manifest["key"],
                    "history_days": [d.isoformat() for d in self.history_days(day)],
                }
                storage.write_bytes(
                    storage.join(directory, MANIFEST_FILE),
                    json.dumps(manifest, indent=2, sort_keys=True).encode(),
                )

            if force:
                target = storage.join(parent, key[:16])
                if datasets.published(target):
                    _remove(target)
            location = datasets.publish_with(parent, key[:16], fill)
        logger.info("%s %s: features published at %s", self.city, day, location)
        return Day(day, location, datasets.read_manifest(location), reused=False)

    def _empty(self) -> pd.DataFrame:
        """The published columns of no rows (a day whose every row was quarantined)."""
        cands = _no_rows("candidates")
        bookings = _no_rows("bookings")
        drivers = pa.schema([f.with_nullable(True) for f in DRIVERS]).empty_table().to_pandas()
        rows = cands.assign(
            **{c: bookings[c] for c in BOOKING_COLUMNS if c not in cands},
            **{c: drivers[c] for c in DRIVER_COLUMNS if c not in cands},
        )
        return feature_frame(
            rows, np.zeros((0, 3)), self.info.tz, np.asarray(self.info.speed_kmh, np.float64)
        )

    def driver_table(self, end: date) -> pd.DataFrame:
        """The driver feature table valid the day after ``end``, from the summaries."""
        after = end + timedelta(days=1)
        days = [d for d in self.history_days(after) if d <= end]
        drivers = self.checked_roster().drivers
        return driver_snapshot(drivers, self.read_summaries(days), np.datetime64(after))


def _no_rows(table: str) -> pd.DataFrame:
    return pa.schema([f.with_nullable(True) for f in RAW_TABLES[table]]).empty_table().to_pandas()


def _no_offers() -> pd.DataFrame:
    return _no_rows("candidates")


def _remove(location: LocationLike) -> None:
    Location.of(location).remove()
