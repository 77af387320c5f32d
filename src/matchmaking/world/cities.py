"""The city catalogue: where the company operates, how big each market is, and how it moves.

Volumes are full-scale daily bookings (about 100M bookings a month over the catalogue); the
world generator simulates a share of them (``--scale``). Fares are in local currency and
follow the usual base + per km + per minute tariff. Road speeds follow a per-hour profile in
local time: peak-hour speeds in the big cities are 15-22 km/h, off-peak about 30 km/h, smaller
cities are faster.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from matchmaking.errors import UnknownCityError

SIZES = ("mega", "large", "medium", "small")


@dataclass(frozen=True)
class City:
    """One market.

    Attributes:
        id: slug, e.g. ``"ho-chi-minh-city"``.
        name: display name.
        country: ISO 3166 alpha-2 code (ID, VN, TH, SG).
        lat: latitude of the city centre.
        lng: longitude of the city centre.
        tz: IANA time zone.
        size: tier, one of ``SIZES``.
        radius_km: radius of the service area around the centre.
        daily_bookings: full-scale bookings on an average day.
        currency: ISO 4217 code of fares.
        fare_base: flag-fall, local currency.
        fare_per_km: local currency per road km.
        fare_per_min: local currency per trip minute.
        speed_kmh: average road speed (km/h) for each local hour 0-23.
    """

    id: str
    name: str
    country: str
    lat: float
    lng: float
    tz: str
    size: str
    radius_km: float
    daily_bookings: int
    currency: str
    fare_base: float
    fare_per_km: float
    fare_per_min: float
    speed_kmh: tuple[float, ...]

    def speed_at(self, hour: int) -> float:
        """Road speed in km/h at a local hour (0-23)."""
        return self.speed_kmh[hour % 24]


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


# Per tier: (radius_km, peak km/h, off-peak km/h, night km/h, fare multiplier vs the capital).
_TIERS: dict[str, tuple[float, float, float, float, float]] = {
    "mega": (25.0, 19.0, 29.0, 38.0, 1.0),
    "large": (15.0, 22.0, 31.0, 40.0, 0.95),
    "medium": (10.0, 26.0, 34.0, 42.0, 0.9),
    "small": (7.0, 30.0, 37.0, 45.0, 0.85),
}

# Car-hailing tariffs of each country's capital: (currency, base, per km, per min).
_FARES: dict[str, tuple[str, float, float, float]] = {
    "ID": ("IDR", 10_000.0, 3_500.0, 400.0),
    "VN": ("VND", 25_000.0, 11_000.0, 500.0),
    "TH": ("THB", 35.0, 9.0, 2.0),
    "SG": ("SGD", 3.0, 0.75, 0.22),
}

_TZ_BY_COUNTRY = {
    "VN": "Asia/Ho_Chi_Minh",
    "TH": "Asia/Bangkok",
    "SG": "Asia/Singapore",
}

# (id, name, country, lat, lng, size, full-scale daily bookings, tz override for Indonesia)
_CATALOGUE: tuple[tuple[str, str, str, float, float, str, int, str | None], ...] = (
    # Indonesia: WIB (Asia/Jakarta, Asia/Pontianak), WITA (Asia/Makassar), WIT (Asia/Jayapura)
    ("jakarta", "Jakarta", "ID", -6.2088, 106.8456, "mega", 800_000, "Asia/Jakarta"),
    ("surabaya", "Surabaya", "ID", -7.2575, 112.7521, "large", 110_000, "Asia/Jakarta"),
    ("bandung", "Bandung", "ID", -6.9175, 107.6191, "large", 85_000, "Asia/Jakarta"),
    ("tangerang", "Tangerang", "ID", -6.1783, 106.6319, "large", 70_000, "Asia/Jakarta"),
    ("bekasi", "Bekasi", "ID", -6.2383, 106.9756, "large", 65_000, "Asia/Jakarta"),
    ("medan", "Medan", "ID", 3.5952, 98.6722, "large", 60_000, "Asia/Jakarta"),
    ("depok", "Depok", "ID", -6.4025, 106.7942, "large", 45_000, "Asia/Jakarta"),
    ("semarang", "Semarang", "ID", -6.9667, 110.4167, "large", 45_000, "Asia/Jakarta"),
    ("makassar", "Makassar", "ID", -5.1477, 119.4327, "large", 40_000, "Asia/Makassar"),
    ("denpasar", "Denpasar", "ID", -8.6705, 115.2126, "large", 50_000, "Asia/Makassar"),
    ("palembang", "Palembang", "ID", -2.9761, 104.7754, "medium", 30_000, "Asia/Jakarta"),
    ("yogyakarta", "Yogyakarta", "ID", -7.7956, 110.3695, "medium", 32_000, "Asia/Jakarta"),
    ("malang", "Malang", "ID", -7.9666, 112.6326, "medium", 24_000, "Asia/Jakarta"),
    ("bogor", "Bogor", "ID", -6.5971, 106.8060, "medium", 28_000, "Asia/Jakarta"),
    ("batam", "Batam", "ID", 1.0456, 104.0305, "medium", 22_000, "Asia/Jakarta"),
    ("pekanbaru", "Pekanbaru", "ID", 0.5071, 101.4478, "medium", 20_000, "Asia/Jakarta"),
    ("padang", "Padang", "ID", -0.9471, 100.4172, "medium", 14_000, "Asia/Jakarta"),
    ("balikpapan", "Balikpapan", "ID", -1.2379, 116.8529, "medium", 14_000, "Asia/Makassar"),
    ("samarinda", "Samarinda", "ID", -0.5022, 117.1536, "medium", 13_000, "Asia/Makassar"),
    ("banjarmasin", "Banjarmasin", "ID", -3.3186, 114.5944, "medium", 13_000, "Asia/Makassar"),
    ("pontianak", "Pontianak", "ID", -0.0263, 109.3425, "medium", 12_000, "Asia/Pontianak"),
    ("manado", "Manado", "ID", 1.4748, 124.8421, "medium", 11_000, "Asia/Makassar"),
    ("surakarta", "Surakarta", "ID", -7.5755, 110.8243, "medium", 15_000, "Asia/Jakarta"),
    ("bandar-lampung", "Bandar Lampung", "ID", -5.3971, 105.2668, "medium", 13_000, "Asia/Jakarta"),
    ("karawang", "Karawang", "ID", -6.3227, 107.3376, "small", 8_000, "Asia/Jakarta"),
    ("serang", "Serang", "ID", -6.1200, 106.1503, "small", 7_000, "Asia/Jakarta"),
    ("cirebon", "Cirebon", "ID", -6.7320, 108.5523, "small", 7_000, "Asia/Jakarta"),
    ("tasikmalaya", "Tasikmalaya", "ID", -7.3274, 108.2207, "small", 5_000, "Asia/Jakarta"),
    ("sukabumi", "Sukabumi", "ID", -6.9277, 106.9300, "small", 4_500, "Asia/Jakarta"),
    ("tegal", "Tegal", "ID", -6.8694, 109.1402, "small", 4_000, "Asia/Jakarta"),
    ("purwokerto", "Purwokerto", "ID", -7.4245, 109.2302, "small", 5_000, "Asia/Jakarta"),
    ("kediri", "Kediri", "ID", -7.8480, 112.0178, "small", 4_000, "Asia/Jakarta"),
    ("jember", "Jember", "ID", -8.1724, 113.7003, "small", 5_000, "Asia/Jakarta"),
    ("jambi", "Jambi", "ID", -1.6101, 103.6131, "small", 7_000, "Asia/Jakarta"),
    ("bengkulu", "Bengkulu", "ID", -3.8004, 102.2655, "small", 4_000, "Asia/Jakarta"),
    ("banda-aceh", "Banda Aceh", "ID", 5.5483, 95.3238, "small", 4_000, "Asia/Jakarta"),
    ("pangkal-pinang", "Pangkal Pinang", "ID", -2.1291, 106.1090, "small", 3_000, "Asia/Jakarta"),
    ("mataram", "Mataram", "ID", -8.5833, 116.1167, "small", 6_000, "Asia/Makassar"),
    ("kupang", "Kupang", "ID", -10.1772, 123.6070, "small", 4_000, "Asia/Makassar"),
    ("kendari", "Kendari", "ID", -3.9985, 122.5120, "small", 4_000, "Asia/Makassar"),
    ("palu", "Palu", "ID", -0.8917, 119.8707, "small", 4_000, "Asia/Makassar"),
    ("gorontalo", "Gorontalo", "ID", 0.5435, 123.0568, "small", 3_000, "Asia/Makassar"),
    ("jayapura", "Jayapura", "ID", -2.5337, 140.7181, "small", 3_500, "Asia/Jayapura"),
    ("ambon", "Ambon", "ID", -3.6954, 128.1814, "small", 3_500, "Asia/Jayapura"),
    # Vietnam
    ("ho-chi-minh-city", "Ho Chi Minh City", "VN", 10.8231, 106.6297, "mega", 500_000, None),
    ("hanoi", "Hanoi", "VN", 21.0278, 105.8342, "mega", 330_000, None),
    ("da-nang", "Da Nang", "VN", 16.0544, 108.2022, "large", 45_000, None),
    ("hai-phong", "Hai Phong", "VN", 20.8449, 106.6881, "large", 32_000, None),
    ("bien-hoa", "Bien Hoa", "VN", 10.9574, 106.8427, "medium", 18_000, None),
    ("thu-dau-mot", "Thu Dau Mot", "VN", 10.9804, 106.6519, "medium", 16_000, None),
    ("can-tho", "Can Tho", "VN", 10.0452, 105.7469, "medium", 16_000, None),
    ("nha-trang", "Nha Trang", "VN", 12.2388, 109.1967, "medium", 15_000, None),
    ("vung-tau", "Vung Tau", "VN", 10.4114, 107.1362, "small", 8_000, None),
    ("hue", "Hue", "VN", 16.4637, 107.5909, "small", 9_000, None),
    ("da-lat", "Da Lat", "VN", 11.9404, 108.4583, "small", 7_000, None),
    ("quy-nhon", "Quy Nhon", "VN", 13.7830, 109.2197, "small", 6_000, None),
    ("vinh", "Vinh", "VN", 18.6796, 105.6813, "small", 5_000, None),
    ("ha-long", "Ha Long", "VN", 20.9599, 107.0425, "small", 6_000, None),
    ("buon-ma-thuot", "Buon Ma Thuot", "VN", 12.6667, 108.0500, "small", 4_000, None),
    ("phan-thiet", "Phan Thiet", "VN", 10.9289, 108.1021, "small", 3_500, None),
    # Thailand
    ("bangkok", "Bangkok", "TH", 13.7563, 100.5018, "mega", 560_000, None),
    ("nonthaburi", "Nonthaburi", "TH", 13.8621, 100.5144, "large", 38_000, None),
    ("samut-prakan", "Samut Prakan", "TH", 13.5991, 100.5998, "large", 30_000, None),
    ("chiang-mai", "Chiang Mai", "TH", 18.7883, 98.9853, "large", 42_000, None),
    ("phuket", "Phuket", "TH", 7.8804, 98.3923, "large", 40_000, None),
    ("pattaya", "Pattaya", "TH", 12.9236, 100.8825, "large", 35_000, None),
    ("khon-kaen", "Khon Kaen", "TH", 16.4322, 102.8236, "medium", 14_000, None),
    ("hat-yai", "Hat Yai", "TH", 7.0086, 100.4747, "medium", 13_000, None),
    ("nakhon-ratchasima", "Nakhon Ratchasima", "TH", 14.9799, 102.0978, "medium", 12_000, None),
    ("udon-thani", "Udon Thani", "TH", 17.4138, 102.7870, "medium", 10_000, None),
    ("rayong", "Rayong", "TH", 12.6814, 101.2816, "small", 7_000, None),
    ("hua-hin", "Hua Hin", "TH", 12.5684, 99.9577, "small", 7_000, None),
    ("chiang-rai", "Chiang Rai", "TH", 19.9105, 99.8406, "small", 5_000, None),
    ("ubon-ratchathani", "Ubon Ratchathani", "TH", 15.2287, 104.8564, "small", 5_000, None),
    ("surat-thani", "Surat Thani", "TH", 9.1382, 99.3215, "small", 4_500, None),
    ("krabi", "Krabi", "TH", 8.0863, 98.9063, "small", 5_000, None),
    ("phitsanulok", "Phitsanulok", "TH", 16.8211, 100.2659, "small", 4_000, None),
    ("nakhon-si-thammarat", "Nakhon Si Thammarat", "TH", 8.4304, 99.9631, "small", 3_500, None),
    # Singapore
    ("singapore", "Singapore", "SG", 1.3521, 103.8198, "large", 230_000, None),
)

# City-specific peak speeds (km/h) where public figures say more than the tier does.
_PEAK_OVERRIDES = {"jakarta": 18.0, "bangkok": 15.5, "ho-chi-minh-city": 17.0, "hanoi": 18.0}
# Singapore is a city-state: one service area far larger than a "large" city's.
_RADIUS_OVERRIDES = {"singapore": 20.0}


def _build() -> dict[str, City]:
    cities: dict[str, City] = {}
    for cid, name, country, lat, lng, size, daily, tz in _CATALOGUE:
        radius, peak, offpeak, night, fare_mult = _TIERS[size]
        currency, base, per_km, per_min = _FARES[country]
        cities[cid] = City(
            id=cid,
            name=name,
            country=country,
            lat=lat,
            lng=lng,
            tz=tz or _TZ_BY_COUNTRY[country],
            size=size,
            radius_km=_RADIUS_OVERRIDES.get(cid, radius),
            daily_bookings=daily,
            currency=currency,
            fare_base=round(base * fare_mult, 2),
            fare_per_km=round(per_km * fare_mult, 2),
            fare_per_min=round(per_min * fare_mult, 2),
            speed_kmh=speed_profile(_PEAK_OVERRIDES.get(cid, peak), offpeak, night),
        )
    return cities


CITIES: dict[str, City] = _build()


def get_city(city_id: str) -> City:
    """Look a city up by id.

    Raises:
        UnknownCityError: naming the closest ids and the command that lists them all.
    """
    try:
        return CITIES[city_id]
    except KeyError:
        pass
    close = difflib.get_close_matches(city_id.lower(), list(CITIES), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    raise UnknownCityError(
        f"unknown city {city_id!r}; {hint}run `matchmaking world cities` to list the "
        f"{len(CITIES)} city ids"
    )
