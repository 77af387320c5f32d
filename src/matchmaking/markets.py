"""The market catalogue: where the company operates, how big each market is, and how it moves.

Markets are data, not code: the default catalogue (the 79 built-in cities) ships as
``matchmaking/config/markets.yaml``; a deployment adds markets, or overrides built-in ones by
id, with files of the same shape named by ``MATCHMAKING_MARKETS`` (one path, or several
separated by ``os.pathsep``; later files win). Files load into pydantic models that refuse
unknown fields; every error names the file, the market and the field (``ConfigError``, exit 2).

The catalogue is read once per process (per value of ``MATCHMAKING_MARKETS``): a running
service picks up a changed file on restart. See docs/markets.md.
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from matchmaking.errors import ConfigError, UnknownCityError

logger = logging.getLogger(__name__)

MARKETS_ENV = "MATCHMAKING_MARKETS"
DEFAULT_FILE = "markets.yaml"
SIZES = ("mega", "large", "medium", "small")
#: City ids may not begin with these: ``<prefix>-country-<cc>`` names a country's pooled model
#: (``registry.conventions.country_model_name``), never a city's.
RESERVED_ID_PREFIXES = ("country-",)

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 5x faster
_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")

# Shape of congestion over the local day: 0 = free-flow (night), 1 = worst peak.
_CONGESTION = (
    0.05, 0.0, 0.0, 0.0, 0.05, 0.2,  # 00-05
    0.55, 0.9, 1.0, 0.8, 0.55, 0.5,  # 06-11
    0.55, 0.5, 0.5, 0.6, 0.8, 0.95,  # 12-17
    1.0, 0.85, 0.6, 0.4, 0.25, 0.1,  # 18-23
)  # fmt: skip


def speed_profile(peak: float, offpeak: float, night: float) -> tuple[float, ...]:
    """A 24-hour speed profile from the peak, typical off-peak (midday) and night speeds.

    Congestion 0.5 (midday) maps to ``offpeak``; 1.0 to ``peak``; 0.0 to ``night``.
    """
    out = []
    for c in _CONGESTION:
        if c <= 0.5:
            v = night + (offpeak - night) * (c / 0.5)
        else:
            v = offpeak + (peak - offpeak) * ((c - 0.5) / 0.5)
        out.append(round(v, 1))
    return tuple(out)


def _time_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"{value!r} is not an IANA time zone (e.g. 'Europe/Lisbon'; see zoneinfo)"
        ) from exc
    return value


def _currency(value: str) -> str:
    if not _CURRENCY.match(value):
        raise ValueError(f"{value!r} is not an ISO 4217 currency code (three capitals, e.g. PHP)")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Country(_Strict):
    """A country's defaults for its markets."""

    currency: str
    time_zone: str

    _check_currency = field_validator("currency")(_currency)
    _check_tz = field_validator("time_zone")(_time_zone)


class Centre(_Strict):
    lat: Annotated[float, Field(ge=-90, le=90)]
    lng: Annotated[float, Field(ge=-180, le=180)]


class Tariff(_Strict):
    """Car-hailing tariff in local currency: base + per road km + per trip minute."""

    base: Annotated[float, Field(ge=0)]
    per_km: Annotated[float, Field(ge=0)]
    per_min: Annotated[float, Field(ge=0)]


class Speeds(_Strict):
    """Road speeds (km/h) at the worst peak, midday off-peak and night."""

    peak: Annotated[float, Field(gt=0, le=150)]
    offpeak: Annotated[float, Field(gt=0, le=150)]
    night: Annotated[float, Field(gt=0, le=150)]


class MarketEntry(_Strict):
    """One market as written in a file; ``currency`` and ``time_zone`` default to the country's."""

    id: str
    name: Annotated[str, Field(min_length=1)]
    country: str
    currency: str | None = None
    time_zone: str | None = None
    centre: Centre
    size: Literal["mega", "large", "medium", "small"] | None = None
    radius_km: Annotated[float, Field(gt=0, le=200)]
    daily_bookings: Annotated[int, Field(gt=0)]
    tariff: Tariff
    speed_kmh: Speeds

    @field_validator("id")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError(f"{value!r} is not a city id (lowercase letters, digits and '-')")
        reserved = next((p for p in RESERVED_ID_PREFIXES if value.startswith(p)), None)
        if reserved is not None:
            raise ValueError(
                f"{value!r}: city ids may not begin with {reserved!r} (reserved for country "
                "models, <prefix>-country-<cc>); rename the market"
            )
        return value

    @field_validator("country")
    @classmethod
    def _alpha2(cls, value: str) -> str:
        if not _COUNTRY.match(value):
            raise ValueError(f"{value!r} is not an ISO 3166 alpha-2 code (two capitals, e.g. PH)")
        return value

    @field_validator("currency")
    @classmethod
    def _iso4217(cls, value: str | None) -> str | None:
        return None if value is None else _currency(value)

    @field_validator("time_zone")
    @classmethod
    def _iana(cls, value: str | None) -> str | None:
        return None if value is None else _time_zone(value)


class MarketsFile(_Strict):
    """The shape of a markets file."""

    countries: dict[str, Country] = Field(default_factory=dict)
    markets: list[MarketEntry] = Field(default_factory=list)

    @field_validator("countries")
    @classmethod
    def _codes(cls, value: dict[str, Country]) -> dict[str, Country]:
        bad = [code for code in value if not _COUNTRY.match(str(code))]
        if bad:
            raise ValueError(f"{bad} are not ISO 3166 alpha-2 codes (two capitals, e.g. PH)")
        return value


class Market(_Strict):
    """One market, resolved: every field set.

    Attributes:
        id: slug, e.g. ``"ho-chi-minh-city"``.
        name: display name.
        country: ISO 3166 alpha-2 code.
        currency: ISO 4217 code of fares.
        time_zone: IANA time zone (also ``tz``).
        centre: the city centre.
        size: tier (``SIZES``), informative only.
        radius_km: radius of the service area around the centre.
        daily_bookings: full-scale bookings on an average day.
        tariff: base + per km + per minute, local currency.
        speeds: peak, off-peak and night road speeds; ``speed_kmh`` is the 24-hour profile.
    """

    id: str
    name: str
    country: str
    currency: str
    time_zone: str
    centre: Centre
    size: str | None
    radius_km: float
    daily_bookings: int
    tariff: Tariff
    speeds: Speeds
    _profile: tuple[float, ...] = PrivateAttr(default=())

    def model_post_init(self, context: Any, /) -> None:
        self._profile = speed_profile(self.speeds.peak, self.speeds.offpeak, self.speeds.night)

    @property
    def tz(self) -> str:
        return self.time_zone

    @property
    def lat(self) -> float:
        return self.centre.lat

    @property
    def lng(self) -> float:
        return self.centre.lng

    @property
    def fare_base(self) -> float:
        return self.tariff.base

    @property
    def fare_per_km(self) -> float:
        return self.tariff.per_km

    @property
    def fare_per_min(self) -> float:
        return self.tariff.per_min

    @property
    def speed_kmh(self) -> tuple[float, ...]:
        """Average road speed (km/h) for each local hour 0-23."""
        return self._profile

    def speed_at(self, hour: int) -> float:
        """Road speed in km/h at a local hour (0-23)."""
        return self._profile[hour % 24]


class Catalogue:
    """The markets in force: the default file, then each deployment file on top."""

    def __init__(self, markets: dict[str, Market], sources: tuple[str, ...]) -> None:
        self.markets = markets
        self.sources = sources

    def __contains__(self, city_id: object) -> bool:
        return city_id in self.markets

    def __len__(self) -> int:
        return len(self.markets)

    def ids(self) -> list[str]:
        return list(self.markets)

    def cities_of(self, country: str) -> list[str]:
        """The ids of ``country``'s markets (alpha-2 code, any case), in catalogue order."""
        code = country.upper()
        return [m.id for m in self.markets.values() if m.country == code]

    def countries(self) -> list[str]:
        """The countries that have markets, sorted."""
        return sorted({m.country for m in self.markets.values()})

    def closest(self, city_id: str, n: int = 3) -> list[str]:
        """The known ids closest to ``city_id`` (difflib), best first."""
        return difflib.get_close_matches(city_id.lower(), self.ids(), n=n, cutoff=0.5)

    def get(self, city_id: str) -> Market:
        """Look a market up by id.

        Raises:
            UnknownCityError: naming the closest ids and the command that lists them all.
        """
        try:
            return self.markets[city_id]
        except KeyError:
            pass
        close = self.closest(city_id)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise UnknownCityError(
            f"unknown city {city_id!r}; {hint}run `matchmaking world cities` to list the "
            f"{len(self.markets)} city ids (markets are defined in {', '.join(self.sources)}; "
            f"add one with a file named by {MARKETS_ENV}, see docs/markets.md)"
        )


def _where(data: object, loc: tuple[int | str, ...]) -> str:
    """``market 'lisbon', field tariff.base`` from a pydantic error location."""
    if len(loc) >= 2 and loc[0] == "markets" and isinstance(loc[1], int):
        rows = data.get("markets") if isinstance(data, dict) else None
        row = rows[loc[1]] if isinstance(rows, list) and loc[1] < len(rows) else None
        ident = row.get("id") if isinstance(row, dict) else None
        market = f"market {ident!r}" if ident else f"market #{loc[1] + 1}"
        field = ".".join(str(p) for p in loc[2:]) or "(the row)"
        return f"{market}, field {field}"
    if len(loc) >= 2 and loc[0] == "countries":
        field = ".".join(str(p) for p in loc[2:]) or "(the entry)"
        return f"country {loc[1]!r}, field {field}"
    return f"field {'.'.join(str(p) for p in loc) or '(top level)'}"


def read_file(path: Path) -> MarketsFile:
    """Parse and validate one markets file.

    Raises:
        ConfigError: unreadable, not YAML, or invalid; naming the file, market and field.
    """
    try:
        data = yaml.load(path.read_text(), Loader=_LOADER)  # a safe loader (libyaml when built)
    except OSError as exc:
        raise ConfigError(
            f"cannot read the markets file {path}: {exc.strerror or exc}; fix {MARKETS_ENV}"
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"markets file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(
            f"markets file {path} must be a mapping with 'countries' and 'markets' "
            "(see docs/markets.md)"
        )
    try:
        return MarketsFile.model_validate(data)
    except ValidationError as exc:
        problems = [f"  - {_where(data, e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(
            f"markets file {path} is invalid ({len(problems)} problem(s)); fix it and rerun:\n"
            + "\n".join(problems)
        ) from exc


def _resolve(files: list[tuple[str, MarketsFile]]) -> dict[str, Market]:
    countries: dict[str, Country] = {}
    entries: dict[str, tuple[str, MarketEntry]] = {}
    for source, parsed in files:
        countries.update(parsed.countries)
        seen: set[str] = set()
        for entry in parsed.markets:
            if entry.id in seen:
                raise ConfigError(
                    f"markets file {source}: market {entry.id!r}, field id: defined twice in "
                    "the file; keep one row per market"
                )
            seen.add(entry.id)
            if entry.id in entries:
                logger.info(
                    "market %s from %s overrides %s", entry.id, source, entries[entry.id][0]
                )
            entries[entry.id] = (source, entry)
    markets: dict[str, Market] = {}
    for city_id, (source, entry) in entries.items():
        country = countries.get(entry.country)
        if country is None:
            raise ConfigError(
                f"markets file {source}: market {city_id!r}, field country: {entry.country!r} "
                f"is not a declared country (known: {', '.join(sorted(countries))}); declare it "
                f"under 'countries:' with its currency and time_zone"
            )
        fields = entry.model_dump(exclude={"speed_kmh", "currency", "time_zone"})
        markets[city_id] = Market(
            **fields,
            currency=entry.currency or country.currency,
            time_zone=entry.time_zone or country.time_zone,
            speeds=entry.speed_kmh,
        )
    return markets


def default_path() -> Path:
    """The catalogue shipped with the package."""
    return Path(__file__).resolve().parent / "config" / DEFAULT_FILE


def load_catalogue(extra: list[Path] | None = None) -> Catalogue:
    """The default catalogue with ``extra`` files on top (later files win, by market id).

    Raises:
        ConfigError: a file is missing, unreadable or invalid.
    """
    paths = [default_path(), *(extra or [])]
    files = [(str(p), read_file(p)) for p in paths]
    return Catalogue(_resolve(files), tuple(str(p) for p in paths))


def env_files(value: str | None = None) -> list[Path]:
    """The deployment files named by ``MATCHMAKING_MARKETS`` (or ``value``)."""
    raw = os.environ.get(MARKETS_ENV, "") if value is None else value
    return [Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip()]


@functools.lru_cache(maxsize=8)
def _cached(value: str) -> Catalogue:
    return load_catalogue(env_files(value))


def catalogue() -> Catalogue:
    """The catalogue in force: the default plus ``MATCHMAKING_MARKETS`` (read once per value).

    Raises:
        ConfigError: a markets file is missing or invalid.
    """
    return _cached(os.environ.get(MARKETS_ENV, ""))


def default_catalogue() -> Catalogue:
    """The built-in catalogue alone, whatever ``MATCHMAKING_MARKETS`` says."""
    return _cached("")


def get_market(city_id: str) -> Market:
    """A market of the catalogue in force.

    Raises:
        UnknownCityError: naming the closest known ids.
        ConfigError: a markets file is invalid.
    """
    return catalogue().get(city_id)
