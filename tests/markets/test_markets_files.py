"""Markets files: the default catalogue, overrides, and bad files refused before anything runs.

Each bad file is refused by the real CLI with exit code 2 and one message naming the file, the
market (or country) and the field; nothing is written.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from matchmaking.errors import ConfigError
from matchmaking.markets import MARKETS_ENV, catalogue, default_catalogue, load_catalogue
from matchmaking.orchestration.config import PipelineConfig, load_pipeline_config

MANILA = Path(__file__).resolve().parent / "manila.yaml"


def _manila() -> dict[str, Any]:
    loaded = yaml.safe_load(MANILA.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "matchmaking.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
        check=False,
    )


def test_the_default_catalogue_holds_the_79_cities_of_four_countries() -> None:
    cat = default_catalogue()
    assert len(cat) == 79
    assert {m.country for m in cat.markets.values()} == {"ID", "VN", "TH", "SG"}
    assert cat.get("makassar").tz == "Asia/Makassar"  # a market's own zone beats its country's
    assert cat.get("surabaya").tz == "Asia/Jakarta"  # the country's default
    assert len(cat.get("bangkok").speed_kmh) == 24


def test_a_file_adds_a_country_and_overrides_a_market_by_id(tmp_path: Path) -> None:
    data = _manila()
    bigger = copy.deepcopy(data["markets"][0])
    bigger.update(id="singapore", name="Singapore", country="SG", radius_km=30.0)
    bigger["centre"] = {"lat": 1.3521, "lng": 103.8198}
    data["markets"].append(bigger)
    path = tmp_path / "markets.yaml"
    path.write_text(yaml.safe_dump(data))
    cat = load_catalogue([path])
    assert len(cat) == 80
    manila = cat.get("manila")
    assert (manila.country, manila.currency, manila.tz) == ("PH", "PHP", "Asia/Manila")
    assert cat.get("singapore").radius_km == 30.0
    assert cat.get("singapore").currency == "SGD"  # from the default file's SG
    assert default_catalogue().get("singapore").radius_km == 20.0


def test_the_environment_names_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "manila" not in catalogue()
    monkeypatch.setenv(MARKETS_ENV, str(MANILA))
    assert catalogue().get("manila").currency == "PHP"


def _mutate(path: list[str | int], value: object) -> dict[str, Any]:
    data = _manila()
    target: Any = data
    for key in path[:-1]:
        target = target[key]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


DELETE = object()
BAD_FILES = {
    "negative radius": (_mutate(["markets", 0, "radius_km"], -5), "'manila'", "radius_km"),
    "bad market zone": (_mutate(["markets", 0, "time_zone"], "Mars/Olympus"), "'manila'", "time_zone"),  # noqa: E501
    "bad country zone": (_mutate(["countries", "PH", "time_zone"], "Asia/Manilla"), "'PH'", "time_zone"),  # noqa: E501
    "undeclared country": (_mutate(["markets", 0, "country"], "MY"), "'manila'", "country"),
    "not alpha-2": (_mutate(["markets", 0, "country"], "PHL"), "'manila'", "country"),
    "bad currency": (_mutate(["countries", "PH", "currency"], "pesos"), "'PH'", "currency"),
    "negative fare": (_mutate(["markets", 0, "tariff", "base"], -1.0), "'manila'", "tariff.base"),
    "unknown field": (_mutate(["markets", 0, "radius"], 3.0), "'manila'", "radius"),
    "missing field": (_mutate(["markets", 0, "daily_bookings"], DELETE), "'manila'", "daily_bookings"),  # noqa: E501
    "zero speed": (_mutate(["markets", 0, "speed_kmh", "peak"], 0), "'manila'", "speed_kmh.peak"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_markets_file_is_refused_naming_file_market_and_field(
    tmp_path: Path, case: str
) -> None:
    data, market, field = BAD_FILES[case]
    path = tmp_path / "markets.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_catalogue([path])
    message = str(err.value)
    assert str(path) in message and market in message and field in message, message

    out = tmp_path / "lake"
    res = _cli(
        "world", "generate", "--cities", "manila", "--days", "1", "--no-progress",
        "--out", str(out), env={MARKETS_ENV: str(path)},
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert str(path) in res.stderr and market in res.stderr and field in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert not out.exists(), "nothing may be written for a bad markets file"


def test_a_missing_markets_file_is_refused_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    res = _cli("world", "cities", env={MARKETS_ENV: str(missing)})
    assert res.returncode == 2, res.stderr
    assert str(missing) in res.stderr and MARKETS_ENV in res.stderr


def test_world_cities_says_when_no_market_matches() -> None:
    res = _cli("world", "cities", "--country", "PH", env={})
    assert res.returncode == 2
    assert "no market in country 'PH'" in res.stderr and MARKETS_ENV in res.stderr
    res = _cli("world", "cities", "--country", "PH", env={MARKETS_ENV: str(MANILA)})
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[:2] == ["manila", "PH"]


def test_pipeline_config_refuses_a_city_the_catalogue_lacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"cities": ["jakarta", "manilla"]}))
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(path)
    assert str(path) in str(err.value) and "'manilla'" in str(err.value)
    assert "(closest: " in str(err.value) and "closest: manila" not in str(err.value)
    monkeypatch.setenv(MARKETS_ENV, str(MANILA))
    with pytest.raises(ConfigError, match="'manilla' \\(closest: manila, "):
        load_pipeline_config(path)
    assert PipelineConfig.model_validate({"cities": ["manila"]}).cities == ["manila"]
    with pytest.raises(ValueError, match="'bangkokk' \\(closest: bangkok"):
        PipelineConfig.model_validate({"cities": ["bangkokk"]})


def test_the_scoring_service_refuses_a_bad_markets_file_before_it_binds(tmp_path: Path) -> None:
    path = tmp_path / "markets.yaml"
    path.write_text(yaml.safe_dump(_mutate(["markets", 0, "radius_km"], -5)))
    res = _cli("serve", "--port", "0", env={MARKETS_ENV: str(path)})
    assert res.returncode == 2, res.stderr
    assert str(path) in res.stderr and "'manila'" in res.stderr and "radius_km" in res.stderr
    assert "listening on" not in res.stderr
