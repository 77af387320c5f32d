"""Row-level validation of raw tables. Bad rows are quarantined with a reason, never dropped
silently: every rule below names the reason it writes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from matchmaking.features.geo import haversine_km

MAX_ETA_SECONDS = 3600.0
MAX_KM_FROM_CENTRE = 150.0
# A booking's first-offer propensities are one probability distribution over its candidates.
PROPENSITY_SUM_TOLERANCE = 1e-6


@dataclass
class ValidationResult:
    bookings: pd.DataFrame
    candidates: pd.DataFrame
    drivers: pd.DataFrame
    quarantine: pd.DataFrame
    counts: Counter[str] = field(default_factory=Counter)
    total_rows: int = 0

    @property
    def bad_rows(self) -> int:
        return sum(self.counts.values())

    @property
    def bad_share(self) -> float:
        return self.bad_rows / self.total_rows if self.total_rows else 0.0


def _isin(values: pd.Series, allowed: pd.Series) -> pd.Series:
    """``values.isin(allowed)`` computed in Arrow (pandas' own isin loops in Python here)."""
    found = pc.is_in(
        pa.array(values.astype(str), type=pa.string()),
        value_set=pa.array(allowed.astype(str), type=pa.string()),
    )
    return pd.Series(found.to_numpy(zero_copy_only=False), index=values.index).fillna(False)


def _first_reason(rules: list[tuple[str, pd.Series]], index: pd.Index) -> pd.Series:
    """For each row, the name of the first rule it breaks (None when it breaks none; a rule
    that cannot tell, NA, counts as broken)."""
    first = np.zeros(len(index), dtype=np.int16)  # 0: no rule broken yet, i: rule i - 1
    for i, (_, bad) in enumerate(rules, start=1):
        broken = bad.reindex(index).fillna(True).to_numpy(dtype=bool)
        first[(first == 0) & broken] = i
    names = np.array([None, *(name for name, _ in rules)], dtype=object)
    return pd.Series(names[first], index=index, dtype=object)


def _bad_coords(df: pd.DataFrame, lat: str, lng: str, centre: tuple[float, float]) -> pd.Series:
    la, ln = df[lat].astype("float64"), df[lng].astype("float64")
    finite = np.isfinite(la) & np.isfinite(ln) & la.between(-90, 90) & ln.between(-180, 180)
    dist = haversine_km(
        la.fillna(0).to_numpy(), ln.fillna(0).to_numpy(), np.array(centre[0]), np.array(centre[1])
    )
    return ~finite | (dist > MAX_KM_FROM_CENTRE)


def _is_probability(p: pd.Series) -> pd.Series:
    """``p`` is in (0, 1]: a probability with which a policy can have made a choice."""
    return pd.Series(np.isfinite(p) & (p > 0) & (p <= 1), index=p.index)


def _bad_propensity_sums(candidates: pd.DataFrame, duplicate: pd.Series) -> pd.Series:
    """Booking ids whose candidates' ``first_offer_propensity`` do not sum to 1 (``duplicate``
    rows, repeats of a (booking, driver) pair, counted once; a missing or non-finite value
    breaks the sum)."""
    once = candidates.loc[~duplicate]
    p = once["first_offer_propensity"].astype("float64").fillna(np.inf)
    sums = p.groupby(once["booking_id"].astype(str)).sum()
    bad = ~((sums - 1.0).abs() <= PROPENSITY_SUM_TOLERANCE)
    return pd.Series(sums.index[bad.to_numpy()], dtype=object)


def _quarantine_rows(table: str, df: pd.DataFrame, reason: pd.Series) -> pd.DataFrame:
    bad = df.loc[reason.notna()]
    return pd.DataFrame(
        {
            "table": table,
            "reason": reason.loc[bad.index].astype(str).to_numpy(),
            "booking_id": bad["booking_id"].astype(str).to_numpy() if "booking_id" in bad else None,
            "driver_id": bad["driver_id"].astype(str).to_numpy() if "driver_id" in bad else None,
            # Typed, so that a day with no bad rows writes a string column as the others do.
            "row": pd.array(
                bad.astype(str).to_json(orient="records", lines=True).splitlines()
                if len(bad)
                else [],
                dtype="str",
            ),
        }
    )


def validate(
    bookings: pd.DataFrame,
    candidates: pd.DataFrame,
    drivers: pd.DataFrame,
    centre: tuple[float, float],
) -> ValidationResult:
    """Split raw rows into clean ones and a quarantine table with one reason per bad row.

    A candidate row is also quarantined when its booking was (reason ``orphan_booking``) or its
    driver is not in the roster or was quarantined (``unknown_driver``). A booking whose
    candidates' first-offer propensities do not sum to 1 is quarantined as a whole
    (``propensity_sum``): its logged policy is not a probability distribution.
    """
    drv_rules = [
        ("null_field", drivers[["driver_id", "home_lat", "home_lng", "rating"]].isna().any(axis=1)),
        ("duplicate_driver", drivers["driver_id"].duplicated(keep="first")),
        ("bad_coordinates", _bad_coords(drivers, "home_lat", "home_lng", centre)),
        ("rating_out_of_range", ~drivers["rating"].between(1.0, 5.0)),
    ]
    drv_reason = _first_reason(drv_rules, drivers.index)

    duplicate_c = candidates.duplicated(subset=["booking_id", "driver_id"], keep="first")
    b_required = ["booking_id", "requested_at", "pickup_lat", "pickup_lng", "dropoff_lat"]
    b_required += ["dropoff_lng", "trip_km", "fare", "logging_policy", "logging_policy_version"]
    b_rules = [
        ("null_field", bookings[b_required].isna().any(axis=1)),
        ("duplicate_booking", bookings["booking_id"].duplicated(keep="first")),
        ("bad_coordinates", _bad_coords(bookings, "pickup_lat", "pickup_lng", centre)),
        ("bad_coordinates", _bad_coords(bookings, "dropoff_lat", "dropoff_lng", centre)),
        ("bad_trip_km", ~(np.isfinite(bookings["trip_km"]) & (bookings["trip_km"] > 0))),
        ("bad_fare", ~(np.isfinite(bookings["fare"]) & (bookings["fare"] > 0))),
        (
            "propensity_sum",
            _isin(bookings["booking_id"], _bad_propensity_sums(candidates, duplicate_c)),
        ),
    ]
    b_reason = _first_reason(b_rules, bookings.index)
    good_bookings = bookings.loc[b_reason.isna(), "booking_id"]
    good_drivers = drivers.loc[drv_reason.isna(), "driver_id"]

    c_required = ["booking_id", "driver_id", "requested_at", "driver_lat", "driver_lng"]
    c_required += ["eta_seconds", "offered", "first_offer_propensity"]
    eta = candidates["eta_seconds"].astype("float64")
    offer_p = candidates["offer_propensity"].astype("float64")
    c_rules = [
        ("null_field", candidates[c_required].isna().any(axis=1)),
        ("duplicate_candidate", duplicate_c),
        ("bad_coordinates", _bad_coords(candidates, "driver_lat", "driver_lng", centre)),
        ("bad_eta", ~(np.isfinite(eta) & (eta > 0) & (eta <= MAX_ETA_SECONDS))),
        (
            "label_inconsistent",
            candidates["offered"].fillna(False).astype(bool) == candidates["accepted"].isna(),
        ),
        (
            "bad_propensity",
            ~_is_probability(candidates["first_offer_propensity"].astype("float64")),
        ),
        (
            "propensity_inconsistent",
            candidates["offered"].fillna(False).astype(bool) == offer_p.isna(),
        ),
        ("bad_propensity", offer_p.notna() & ~_is_probability(offer_p)),
        ("orphan_booking", ~_isin(candidates["booking_id"], good_bookings)),
        ("unknown_driver", ~_isin(candidates["driver_id"], good_drivers)),
    ]
    c_reason = _first_reason(c_rules, candidates.index)

    quarantine = pd.concat(
        [
            _quarantine_rows("drivers", drivers, drv_reason),
            _quarantine_rows("bookings", bookings, b_reason),
            _quarantine_rows("candidates", candidates, c_reason),
        ],
        ignore_index=True,
    )
    counts: Counter[str] = Counter()
    for table, reason in (
        ("drivers", drv_reason),
        ("bookings", b_reason),
        ("candidates", c_reason),
    ):
        for name, n in reason.dropna().value_counts().items():
            counts[f"{table}.{name}"] += int(n)
    return ValidationResult(
        bookings=bookings.loc[b_reason.isna()].reset_index(drop=True),
        candidates=candidates.loc[c_reason.isna()].reset_index(drop=True),
        drivers=drivers.loc[drv_reason.isna()].reset_index(drop=True),
        quarantine=quarantine,
        counts=counts,
        total_rows=len(drivers) + len(bookings) + len(candidates),
    )
