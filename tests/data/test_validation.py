"""generate_world validates every argument before writing anything."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from matchmaking.errors import InputError, UnknownCityError
from matchmaking.markets import default_catalogue
from matchmaking.markets import get_market
from matchmaking.world.generate import generate_world

CITIES = default_catalogue().markets


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"cities": ["jakarta", "bangkokk"]}, UnknownCityError, "'bangkok'"),
        ({"cities": []}, InputError, "no city"),
        ({"days": 0}, InputError, "days"),
        ({"days": 3661}, InputError, "days"),
        ({"start": date(1999, 12, 31)}, InputError, "1999-12-31"),
        ({"start": date(2100, 12, 1), "days": 40}, InputError, "after 2100-12-31"),
        ({"scale": 0.0}, InputError, "scale"),
        ({"scale": -1.0}, InputError, "scale"),
        ({"seed": -1}, InputError, "seed"),
        ({"bookings_per_day": 0}, InputError, "bookings per day"),
        ({"dispatch_temperature": 0.0}, InputError, "dispatch temperature"),
        ({"dispatch_temperature": 0.05}, InputError, "dispatch temperature"),
        ({"dispatch_temperature": float("nan")}, InputError, "dispatch temperature"),
    ],
)
def test_invalid_arguments_fail_before_writing(
    tmp_path: Path, kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    args: dict[str, object] = {
        "cities": ["hue"],
        "start": date(2026, 10, 1),
        "days": 1,
        "seed": 1,
        "out": tmp_path / "lake",
        "scale": 0.002,
        "bookings_per_day": None,
        "progress": False,
    }
    args.update(kwargs)
    with pytest.raises(error, match=match):
        generate_world(**args)  # type: ignore[arg-type]
    assert not (tmp_path / "lake").exists()


def test_catalogue_covers_four_countries_and_100m_monthly_bookings() -> None:
    assert len(CITIES) >= 70
    assert {c.country for c in CITIES.values()} == {"ID", "VN", "TH", "SG"}
    monthly = 30 * sum(c.daily_bookings for c in CITIES.values())
    assert 100e6 <= monthly <= 130e6
    biggest = sorted(CITIES.values(), key=lambda c: -c.daily_bookings)[:3]
    assert {c.id for c in biggest} == {"jakarta", "bangkok", "ho-chi-minh-city"}
    for c in CITIES.values():
        assert len(c.speed_kmh) == 24 and max(c.speed_kmh) <= 50
    assert 17.0 <= min(get_market("jakarta").speed_kmh) <= 22.0
    assert 15.0 <= min(get_market("bangkok").speed_kmh) <= 22.0
    assert get_market("ho-chi-minh-city").tz == "Asia/Ho_Chi_Minh"


def test_get_city_suggests_and_points_at_the_listing() -> None:
    with pytest.raises(UnknownCityError, match="matchmaking world cities") as err:
        get_market("singapor")
    assert "'singapore'" in str(err.value)
