"""Promotion gate and rollback against the real tracking server (PostgreSQL-backed)."""

from __future__ import annotations

import itertools
import math
import shutil
import threading
import time
import warnings
from dataclasses import dataclass

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from support.registry_world import Trained, register_copy, settings_for

from matchmaking.config import Settings
from matchmaking.errors import TrackingError
from matchmaking.lake import storage
from matchmaking.registry.conventions import (
    FENCE_TAG,
    GENERATION_TAG,
    PRODUCTION_ALIAS,
    REPORT_ARTIFACT,
)
from matchmaking.registry.fence import fence
from matchmaking.registry.fleet import CityOutcome, exit_code, format_summary
from matchmaking.registry.gate import load_thresholds
from matchmaking.registry.lock import Lease, LeaseLostError, PromotionLock
from matchmaking.registry.production import current_production, verify_consistent
from matchmaking.registry.promote import promote
from matchmaking.registry.rollback import rollback


def _client(settings: Settings) -> MlflowClient:
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def _state(settings: Settings, city: str = "jakarta") -> tuple[str | None, list[str]]:
    """(alias holder, versions in stage Production)."""
    client = _client(settings)
    name = f"{settings.model_name_prefix}-{city}"
    try:
        alias = str(client.get_model_version_by_alias(name, PRODUCTION_ALIAS).version)
    except mlflow.exceptions.MlflowException:
        alias = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        staged = sorted(
            str(mv.version)
            for mv in client.search_model_versions(f"name='{name}'")
            if mv.current_stage == "Production"
        )
    return alias, staged


# For the tests about locking and consistency: the latency bound is not what they test, and a
# busy machine must not turn a good candidate into a refused one.
RELAXED = load_thresholds().model_copy(update={"max_latency_p99_ms": 10_000.0})


def _tags(settings: Settings, version: str, city: str = "jakarta") -> dict[str, str]:
    name = f"{settings.model_name_prefix}-{city}"
    return dict(_client(settings).get_model_version(name, version).tags)


def test_worse_refused_better_promoted_then_rollback(trained: Trained) -> None:
    settings = settings_for(trained)
    v1 = register_copy(settings, "jakarta", trained.weak)
    [first] = promote(settings, ["jakarta"], actor="tester")
    assert (first.status, first.version, first.previous) == ("promoted", v1, None)
    assert "compared_with" not in first.detail  # no Production yet: floors only

    v2 = register_copy(settings, "jakarta", trained.shuffled)
    [refused] = promote(settings, ["jakarta"], actor="tester")
    assert refused.status == "refused" and refused.exit_code == 7
    assert refused.version == v2 and refused.previous == v1 and "AUC" in refused.detail
    assert _state(settings) == (v1, [v1])  # Production untouched
    bad = _tags(settings, v2)
    assert bad["gate.result"] == "failed" and "AUC" in bad["gate.reason"]

    v3 = register_copy(settings, "jakarta", trained.good)
    [better] = promote(settings, ["jakarta"], actor="tester")
    assert (better.status, better.version, better.previous) == ("promoted", v3, v1)
    assert better.metrics["auc"] > first.metrics["auc"]
    assert _state(settings) == (v3, [v3])
    good = _tags(settings, v3)
    assert good["gate.result"] == "passed"
    assert good["production.previous"] == v1 and good["gate.compared_with"] == v1
    assert good["production.by"] == "tester"
    report = mlflow.artifacts.load_text(f"runs:/{good['gate.run_id']}/{REPORT_ARTIFACT}")
    assert "PASS" in report and f"v{v1}" in report and "| acceptance |" in report

    [back] = rollback(settings, ["jakarta"], actor="tester")
    assert (back.status, back.version, back.previous) == ("rolled back", v1, v3)
    assert _state(settings) == (v1, [v1])
    # What serving polls for a city's model:
    serving_view = current_production(_client(settings), f"{settings.model_name_prefix}-jakarta")
    assert serving_view is not None and str(serving_view.version) == v1
    assert _tags(settings, v1)["production.reason"] == f"rollback from v{v3}"

    [explicit] = rollback(settings, ["jakarta"], to=v3)
    assert explicit.status == "rolled back" and _state(settings) == (v3, [v3])


def test_dry_run_changes_nothing(trained: Trained) -> None:
    settings = settings_for(trained)
    v1 = register_copy(settings, "jakarta", trained.weak)
    promote(settings, ["jakarta"], thresholds=RELAXED)
    v2 = register_copy(settings, "jakarta", trained.good)
    before = _tags(settings, v2)
    client = _client(settings)
    exp = client.get_experiment_by_name(f"{settings.experiment_prefix}-jakarta")
    assert exp is not None
    runs_before = len(client.search_runs([exp.experiment_id]))

    [outcome] = promote(settings, ["jakarta"], dry_run=True, thresholds=RELAXED)
    assert outcome.status == "would promote" and outcome.exit_code == 0
    assert outcome.version == v2 and outcome.previous == v1
    assert _state(settings) == (v1, [v1])
    assert _tags(settings, v2) == before
    assert len(client.search_runs([exp.experiment_id])) == runs_before


@dataclass
class Held:
    """One promoter's time under the lock, and what held Production when it got in."""

    kind: str
    acquired: float
    production: str | None
    released: float = math.inf


def test_concurrent_promotions_exclude_each_other_and_chain(
    trained: Trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five promoters of one city start at once with candidates of different quality.

    Checked: at most one holds the lock at a time (the held intervals do not overlap); each
    promotion's recorded previous version (outcome and ``production.previous`` tag) is the
    version that held Production when it took the lock, so the promotions form one chain; a
    weaker candidate never replaces a better one; the end state is consistent.

    With the lock made a no-op (``acquire`` returning a lease without creating a file, ``renew``
    and ``release`` doing nothing) this test fails: the intervals overlap, and promoters gate
    against a Production version that another one replaces meanwhile.
    """
    settings = settings_for(trained)
    name = f"{settings.model_name_prefix}-jakarta"
    rank = {"shuffled": 0, "weak": 1, "weak-again": 1, "good": 2, "good-again": 2}
    source = {"shuffled": trained.shuffled, "weak": trained.weak, "good": trained.good}
    versions = {
        kind: register_copy(settings, "jakarta", source[kind.split("-")[0]]) for kind in rank
    }
    kind_of = {v: k for k, v in versions.items()}
    held: list[Held] = []
    acquire, release = PromotionLock.acquire, PromotionLock.release

    def recording_acquire(self: PromotionLock) -> Lease:
        lease = acquire(self)
        now = time.monotonic()
        current = current_production(_client(settings), name)
        held.append(Held(threading.current_thread().name, now, current and str(current.version)))
        return lease

    def recording_release(self: PromotionLock, lease: Lease) -> None:
        [mine] = [h for h in held if h.kind == threading.current_thread().name]
        mine.released = time.monotonic()
        release(self, lease)

    monkeypatch.setattr(PromotionLock, "acquire", recording_acquire)
    monkeypatch.setattr(PromotionLock, "release", recording_release)
    outcomes: dict[str, CityOutcome] = {}
    start = threading.Barrier(len(versions))

    def run(kind: str) -> None:
        start.wait()
        [outcomes[kind]] = promote(
            settings, ["jakarta"], version=versions[kind], actor=kind, thresholds=RELAXED
        )

    threads = [threading.Thread(target=run, args=(k,), name=k) for k in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert set(outcomes) == set(versions), outcomes
    held.sort(key=lambda h: h.acquired)
    assert [h.kind for h in held if h.released == math.inf] == []
    for before, after in itertools.pairwise(held):
        assert before.released <= after.acquired, f"{before} overlaps {after}"
    assert all(o.status in ("promoted", "refused") for o in outcomes.values()), outcomes
    assert outcomes["shuffled"].status == "refused"

    production: str | None = None  # what a promoter taking the lock must see, in lock order
    for h in held:
        outcome = outcomes[h.kind]
        assert h.production == production, (h, outcome)
        assert outcome.previous == production, (h, outcome)
        if outcome.status == "promoted":
            tags = _tags(settings, outcome.version or "")
            assert tags["production.previous"] == (production or ""), tags
            assert tags["gate.compared_with"] == (production or "")
            if production is not None:
                assert rank[h.kind] >= rank[kind_of[production]], (
                    f"{h.kind} replaced the better {kind_of[production]}"
                )
            production = outcome.version
    alias, staged = _state(settings)
    assert alias == production and staged == [alias]
    assert kind_of[alias].startswith("good")
    assert _tags(settings, alias)["gate.result"] == "passed"
    assert "promotion.lock" not in _client(settings).get_registered_model(name).tags
    lease = PromotionLock(settings.promotion_locks_dir, name).current()
    assert lease is not None and lease.released_at is not None
    assert lease.generation == len(versions)  # one generation per promoter, none skipped


def test_a_zombie_holder_cannot_move_production(trained: Trained) -> None:
    """A promoter paused past its lease (a zombie) is refused at the fence, both by the lease
    (a later generation took over) and by the registry's recorded generation."""
    settings = settings_for(trained)
    name = f"{settings.model_name_prefix}-jakarta"
    client = _client(settings)
    v1 = register_copy(settings, "jakarta", trained.good)
    past = PromotionLock(settings.promotion_locks_dir, name, clock=lambda: time.time() - 3600)
    zombie = past.acquire()  # taken an hour ago (by its clock): expired for everyone else

    # The successor takes the expired lease over and promotes v1.
    [outcome] = promote(settings, ["jakarta"], actor="successor", thresholds=RELAXED)
    assert outcome.status == "promoted" and _state(settings) == (v1, [v1])
    assert _tags(settings, v1)[GENERATION_TAG] == str(zombie.generation + 1)
    assert client.get_registered_model(name).tags[FENCE_TAG] == str(zombie.generation + 1)
    with pytest.raises(LeaseLostError, match="taken over"):
        fence(client, name, past, zombie)

    # The lock folder lost (deleted by hand): generations restart, the registry still refuses.
    shutil.rmtree(storage.local_path(settings.promotion_locks_dir) / name)
    v2 = register_copy(settings, "jakarta", trained.good)
    [late] = promote(settings, ["jakarta"], version=v2, actor="after-reset", thresholds=RELAXED)
    assert late.status == "error" and late.exit_code == 5
    assert FENCE_TAG in late.detail and "nothing was moved" in late.detail
    assert _state(settings) == (v1, [v1])


def test_stage_out_of_step_is_reported_not_papered_over_and_rollback_repairs_it(
    trained: Trained,
) -> None:
    settings = settings_for(trained)
    name = f"{settings.model_name_prefix}-jakarta"
    client = _client(settings)
    v1 = register_copy(settings, "jakarta", trained.good)
    [first] = promote(settings, ["jakarta"], thresholds=RELAXED)
    assert first.status == "promoted", first
    v2 = register_copy(settings, "jakarta", trained.weak)
    with warnings.catch_warnings():  # a writer bypassing the lock puts v2 in stage Production
        warnings.simplefilter("ignore", FutureWarning)
        client.transition_model_version_stage(name, v2, "Production")
    with pytest.raises(TrackingError, match=f"rollback --city <city> --to {v1}"):
        verify_consistent(client, name)
    assert _state(settings) == (v1, sorted([v1, v2]))  # the check changed nothing

    [fixed] = rollback(settings, ["jakarta"], to=v1)  # the fix the message names
    assert (fixed.status, fixed.exit_code) == ("repaired", 0)
    assert _state(settings) == (v1, [v1])
    assert _tags(settings, v1)["production.previous"] == ""  # history untouched


def test_fleet_one_failing_city_does_not_stop_the_others(trained: Trained) -> None:
    settings = settings_for(trained)
    register_copy(settings, "bangkok", trained.shuffled, trained.world.train_dirs["bangkok"])
    v_jkt = register_copy(settings, "jakarta", trained.good)

    outcomes = promote(settings, None)  # every city with a registered model
    by_city = {o.city: o for o in outcomes}
    assert set(by_city) == {"bangkok", "jakarta"}
    assert by_city["bangkok"].status == "refused"
    assert by_city["jakarta"].status == "promoted" and by_city["jakarta"].version == v_jkt
    assert exit_code(outcomes) == 7
    table = format_summary(outcomes)
    assert "bangkok" in table and "refused" in table and "2 city(ies), 1 failed" in table
    assert _state(settings, "bangkok") == (None, [])


def test_rollback_without_history_fails_cleanly(trained: Trained) -> None:
    settings = settings_for(trained)
    register_copy(settings, "jakarta", trained.good)
    [first] = promote(settings, ["jakarta"], thresholds=RELAXED)
    assert first.status == "promoted", first
    [outcome] = rollback(settings, ["jakarta"])
    assert outcome.status == "error" and outcome.exit_code == 6
    assert "--to" in outcome.detail
