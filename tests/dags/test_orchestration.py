"""The orchestration logic without Airflow: config, windows, lake URIs, the training plan."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from matchmaking.config import Settings
from matchmaking.errors import ConfigError
from matchmaking.orchestration.config import (
    DEFAULT_CONFIG,
    PipelineConfig,
    features_asset_uri,
    lake_location,
    lake_path,
    load_pipeline_config,
    run_day,
)
from matchmaking.orchestration.tasks import (
    data_windows,
    features_event,
    plan_countries,
    plan_training,
)


def _config(**values: object) -> PipelineConfig:
    return PipelineConfig.model_validate({"cities": ["jakarta", "bangkok"], **values})


def test_the_packaged_config_loads_with_promotion_off() -> None:
    cfg = load_pipeline_config(DEFAULT_CONFIG)
    assert cfg.cities == ["jakarta", "bangkok", "ho-chi-minh-city"]
    assert cfg.promotion.enabled is False
    assert cfg.retries > 0


def test_the_env_var_names_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"cities": ["surabaya"], "train_params": {"num_leaves": 7}}))
    monkeypatch.setenv("MATCHMAKING_PIPELINE_CONFIG", str(path))
    cfg = load_pipeline_config()
    assert cfg.cities == ["surabaya"]
    assert cfg.train_params == {"num_leaves": "7"}  # -P values are strings


def test_unknown_keys_and_bad_cities_are_errors_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"cities": ["jakarta"], "citys": ["bangkok"]}))
    with pytest.raises(ConfigError, match=str(path)):
        load_pipeline_config(path)
    path.write_text(yaml.safe_dump({"cities": ["jakarta", "jakarta"]}))
    with pytest.raises(ConfigError, match="listed twice"):
        load_pipeline_config(path)
    path.write_text(yaml.safe_dump({"cities": ["Ho Chi Minh"]}))
    with pytest.raises(ConfigError, match="slugs"):
        load_pipeline_config(path)


def test_lake_uris_file_paths_and_object_storage_resolve(tmp_path: Path) -> None:
    assert lake_path((tmp_path / "data" / "lake").as_uri()) == tmp_path / "data" / "lake"
    assert lake_path(str(tmp_path / "x y" / "lake")) == tmp_path / "x y" / "lake"
    assert lake_path("file:///srv/my%20data/lake") == Path("/srv/my data/lake")
    with pytest.raises(ConfigError, match="object storage"):
        lake_path("s3://bucket/lake")
    cfg = _config(lake_uri=(tmp_path / "data" / "lake").as_uri())
    assert cfg.data_dir() == tmp_path / "data"
    assert cfg.lake_location() == str(tmp_path / "data" / "lake")
    assert features_asset_uri(cfg) == f"{(tmp_path / 'data' / 'lake').as_uri()}/features"
    # Any directory name works now that the steps take MATCHMAKING_LAKE_URI.
    warehouse = _config(lake_uri=str(tmp_path / "warehouse"))
    assert warehouse.lake_location() == str(tmp_path / "warehouse")
    remote = _config(lake_uri="s3://bucket/prod/lake/")
    assert remote.lake_location() == "s3://bucket/prod/lake"
    assert remote.data_dir() is None
    assert features_asset_uri(remote) == "s3://bucket/prod/lake/features"
    assert lake_location("file:///srv/my%20data/lake/features/x") == "/srv/my data/lake/features/x"


def test_the_day_gives_the_holdout_then_the_training_window_before_it() -> None:
    cfg = _config(windows={"train_days": 28, "holdout_days": 7, "lag_days": 1})
    w = data_windows(cfg, date(2026, 10, 3))
    assert (w.holdout_start, w.holdout_end) == (date(2026, 9, 26), date(2026, 10, 2))
    assert (w.train_start, w.train_end) == (date(2026, 8, 29), date(2026, 9, 25))
    ran = datetime(2026, 10, 5, 9, tzinfo=UTC)
    assert run_day(datetime(2026, 10, 3, 2, tzinfo=UTC), ran) == date(2026, 10, 3)
    assert run_day(None, ran) == date(2026, 10, 5)  # a manual run without a logical date


def test_the_plan_follows_the_config_and_the_event() -> None:
    cfg = _config(cities=["jakarta", "bangkok", "surabaya"])
    results = [{"city": c, "features_uri": f"file:///l/{c}"} for c in ("bangkok", "old", "jakarta")]
    event = features_event(date(2026, 10, 3), results)
    assert event["day"] == "2026-10-03"
    plan = plan_training(cfg, event)
    # Configured order; a city no longer configured is not trained; one not published is skipped.
    assert [p["city"] for p in plan] == ["jakarta", "bangkok"]


def test_promotion_applies_only_where_configured() -> None:
    assert not _config().promotion.applies_to("jakarta")
    some = _config(promotion={"enabled": True, "cities": ["bangkok"]}).promotion
    assert some.applies_to("bangkok") and not some.applies_to("jakarta")
    assert _config(promotion={"enabled": True}).promotion.applies_to("jakarta")


def test_the_parse_time_city_check_reads_the_ids_the_catalogue_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matchmaking import markets
    from matchmaking.orchestration.config import _catalogue_ids

    extra = tmp_path / "markets.yaml"
    extra.write_text(
        "countries:\n  PH: {currency: PHP, time_zone: Asia/Manila}\nmarkets:\n"
        "  - id: manila\n    name: Manila\n    country: PH\n    centre: {lat: 14.6, lng: 121.0}\n"
        "    radius_km: 20\n    daily_bookings: 1000\n"
        "    tariff: {base: 40, per_km: 14, per_min: 2}\n"
        "    speed_kmh: {peak: 15, offpeak: 25, night: 35}\n"
    )
    assert _catalogue_ids("") == set(markets.default_catalogue().ids())
    monkeypatch.setenv(markets.MARKETS_ENV, str(extra))
    assert "manila" in _catalogue_ids(str(extra))
    assert _catalogue_ids(str(extra)) == set(markets.catalogue().ids())
    assert PipelineConfig.model_validate({"cities": ["manila", "jakarta"]}).cities[0] == "manila"
    # A file the fast path cannot read falls back to the catalogue, which names the problem.
    monkeypatch.setenv(markets.MARKETS_ENV, str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match=r"missing\.yaml"):
        PipelineConfig.model_validate({"cities": ["jakarta"]})


def _event(city: str, day: str) -> dict[str, object]:
    return {
        "city": city,
        "day": day,
        "features_uri": f"file:///lake/features/city={city}/{day}/train",
        "holdout_features_uri": f"file:///lake/features/city={city}/{day}/holdout",
    }


def test_a_country_model_is_planned_once_all_its_cities_published_the_same_day() -> None:
    """Makassar and Surabaya (ID) and Bangkok (TH, alone): ID is planned only when both ID
    cities' newest events are of one day; TH never (one city < min_cities); nothing when the
    country models are off."""
    cfg = _config(cities=["makassar", "surabaya", "bangkok"])
    first = [_event("makassar", "2026-08-11"), _event("bangkok", "2026-08-11")]
    assert plan_countries(cfg, first) == []  # Surabaya has not published yet
    both = [*first, _event("surabaya", "2026-08-10")]
    assert plan_countries(cfg, both) == []  # Surabaya's newest is of another day
    both.append(_event("surabaya", "2026-08-11"))
    (planned,) = plan_countries(cfg, both)
    assert planned["country"] == "ID" and planned["day"] == "2026-08-11"
    assert planned["features"] == {
        c: f"file:///lake/features/city={c}/2026-08-11/train" for c in ("makassar", "surabaya")
    }
    off = _config(cities=cfg.cities, country_models={"enabled": False})
    assert plan_countries(off, both) == []
    three = _config(cities=cfg.cities, country_models={"min_cities": 3})
    assert plan_countries(three, both) == []
    # A city's run plans its country only when its event is the country's newest: of the ID
    # runs only Surabaya's (its event came last) trains the model; Bangkok's never does.
    assert plan_countries(cfg, both, "bangkok") == []
    assert plan_countries(cfg, both, "makassar") == []
    assert [p["country"] for p in plan_countries(cfg, both, "surabaya")] == ["ID"]


def test_plan_days_lists_the_unbuilt_city_days_none_once_built_and_a_changed_day_again(
    tmp_path: Path,
) -> None:
    import pyarrow.parquet as pq

    from matchmaking.orchestration.tasks import plan_days, process_city_days, summarise_city_days
    from matchmaking.world.generate import generate_world

    lake = tmp_path / "data" / "lake"
    first = date(2026, 8, 1)
    generate_world(["jakarta"], first, 4, 5, lake, 0.002, 60, progress=False)
    cfg = _config(
        cities=["jakarta"],
        queues={"jakarta": "heavy"},
        lake_uri=lake.as_uri(),
        windows={"train_days": 2, "holdout_days": 1, "lag_days": 1},
    )
    run = date(2026, 8, 5)  # windows 08-02..03 and 08-04, history from the lake's first day

    def pairs(plan: dict[str, list[dict[str, Any]]], key: str) -> list[str]:
        assert all(len(p["days"]) == 1 for p in plan[key])  # days_per_task: 1, the default
        return [p["days"][0] for p in plan[key]]

    plan = plan_days(cfg, run)
    assert set(plan) == {"summarise_heavy", "process_day_heavy"}  # the queues with cities
    # The last day's summary is published by its own process_day (no other day needs it).
    assert pairs(plan, "summarise_heavy") == [f"2026-08-0{d}" for d in (1, 2, 3)]
    assert pairs(plan, "process_day_heavy") == [f"2026-08-0{d}" for d in (2, 3, 4)]
    for item in plan["summarise_heavy"]:
        summarise_city_days(cfg, "jakarta", [date.fromisoformat(d) for d in item["days"]])
    assert [item["summaries"] for item in plan["process_day_heavy"]] == [[], [], ["2026-08-04"]]
    for item in plan["process_day_heavy"]:
        days, own = ([date.fromisoformat(d) for d in item[k]] for k in ("days", "summaries"))
        (built,) = process_city_days(cfg, "jakarta", days, own)
        assert built["rows"] > 0
    again = plan_days(cfg, run)
    assert again["summarise_heavy"] == again["process_day_heavy"] == []
    # The same rows in other bytes: that day's raw digest changed, so its summary is missing,
    # and so are the features of that day and of the day whose history it is.
    raw = lake / "raw" / "city=jakarta" / "date=2026-08-03" / "candidates.parquet"
    pq.write_table(pq.read_table(raw), raw, compression="snappy")
    changed = plan_days(cfg, run)
    assert pairs(changed, "summarise_heavy") == ["2026-08-03"]
    assert pairs(changed, "process_day_heavy") == ["2026-08-03", "2026-08-04"]


def test_days_per_task_cuts_a_citys_days_into_chunks_and_a_broken_day_fails_only_itself(
    tmp_path: Path,
) -> None:
    from matchmaking.errors import DataQualityError
    from matchmaking.orchestration.tasks import (
        day_label,
        plan_days,
        process_city_days,
        summarise_city_days,
    )
    from matchmaking.processing.day import DayProcessor
    from matchmaking.world.generate import generate_world

    lake = tmp_path / "data" / "lake"
    generate_world(["jakarta"], date(2026, 8, 1), 5, 5, lake, 0.002, 60, progress=False)
    cfg = _config(
        cities=["jakarta"],
        lake_uri=lake.as_uri(),
        windows={"train_days": 2, "holdout_days": 2, "lag_days": 1},
        days_per_task=3,
    )
    # A task holding all of a city's days publishes every summary itself: none to summarise.
    whole = plan_days(cfg.model_copy(update={"days_per_task": 9}), date(2026, 8, 6))
    assert whole["summarise"] == []
    assert whole["process_day"] == [
        {
            "city": "jakarta",
            "days": [f"2026-08-0{d}" for d in (2, 3, 4, 5)],
            "summaries": [f"2026-08-0{d}" for d in (1, 2, 3, 4, 5)],
        }
    ]
    plan = plan_days(cfg, date(2026, 8, 6))  # windows 08-02..03 and 08-04..05
    # 08-05's summary is published by its own task (no other day needs it); 08-02..04's are
    # needed by 08-05's task too, so they are summarised first.
    summaries = [item["days"] for item in plan["summarise"]]
    assert summaries == [["2026-08-01", "2026-08-02", "2026-08-03"], ["2026-08-04"]]
    assert [item["days"] for item in plan["process_day"]] == [
        ["2026-08-02", "2026-08-03", "2026-08-04"],
        ["2026-08-05"],
    ]
    assert day_label("jakarta", summaries[0]) == "jakarta 2026-08-01..2026-08-03"
    assert day_label("jakarta", ["2026-08-05"]) == "jakarta 2026-08-05"
    # 08-04 is broken: a task holding it fails naming that day alone, its other days are
    # published.
    broken = lake / "raw" / "city=jakarta" / "date=2026-08-04" / "bookings.parquet"
    broken.write_bytes(b"not parquet: a truncated upload")
    summarise_city_days(cfg, "jakarta", [date(2026, 8, d) for d in (1, 2, 3)])
    with pytest.raises(
        DataQualityError, match=r"(?s)1 of this task's 2 days failed.*date=2026-08-04"
    ):
        summarise_city_days(cfg, "jakarta", [date(2026, 8, 4), date(2026, 8, 5)])
    # The features of the days whose history or own summary needs 08-04 fail naming it.
    with pytest.raises(
        DataQualityError, match=r"(?s)1 of this task's 3 days.*2026-08-04: .*date=2026-08-04"
    ):
        process_city_days(cfg, "jakarta", [date(2026, 8, d) for d in (2, 3, 4)])
    with pytest.raises(DataQualityError, match=r"summaries of 2026-08-04"):
        process_city_days(cfg, "jakarta", [date(2026, 8, 5)])  # one day: its own error
    proc = DayProcessor(Settings(lake_uri=str(lake), data_dir=lake.parent), "jakarta", 0.05)
    assert [d.day for d in map(proc.find_day, [date(2026, 8, d) for d in (2, 3)]) if d] == [
        date(2026, 8, 2),
        date(2026, 8, 3),
    ]
    assert proc.find_summary(date(2026, 8, 5)) is not None
    # The rerun's plan: one task for 08-04 (its summary too: only 08-05, of the same task,
    # needs it) and 08-05; nothing else.
    again = plan_days(cfg, date(2026, 8, 6))
    assert again["summarise"] == []
    assert again["process_day"] == [
        {"city": "jakarta", "days": ["2026-08-04", "2026-08-05"], "summaries": ["2026-08-04"]}
    ]
