"""The promotion lock on its own: exclusive create, expired takeover, zombies, S3.

Races start many contenders at a barrier and count winners: with ``wait_s=0`` a contender that
does not get the lease at once raises ``LockTimeoutError``, so exactly one must come back with
a lease. Made a no-op (``create`` always succeeding, or ``acquire`` not checking the current
lease), every race here ends with several winners and fails.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.s3 import new_bucket

from matchmaking.config import Settings
from matchmaking.errors import ConfigError, StorageError
from matchmaking.lake.storage import Location
from matchmaking.registry.lock import KEEP, Lease, LeaseLostError, LockTimeoutError, PromotionLock

MODEL = "matchmaking-jakarta"
CONTENDERS = 12


def _race(contenders: list[PromotionLock]) -> list[Lease]:
    """All contenders call ``acquire`` at once; the leases of those that got one."""
    barrier = threading.Barrier(len(contenders))
    won: list[Lease] = []
    lost: list[BaseException] = []

    def run(lock: PromotionLock) -> None:
        barrier.wait()
        try:
            won.append(lock.acquire())
        except LockTimeoutError as exc:
            lost.append(exc)

    threads = [threading.Thread(target=run, args=(lock,)) for lock in contenders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(won) + len(lost) == len(contenders), "a contender neither won nor lost"
    return won


def _clock(offset: float) -> Callable[[], float]:
    return lambda: time.time() + offset


def test_exclusive_create_race_between_threads_has_one_winner(tmp_path: Path) -> None:
    for _ in range(3):
        root = tmp_path / f"locks-{_}"
        won = _race([PromotionLock(root, MODEL, wait_s=0) for _ in range(CONTENDERS)])
        assert len(won) == 1, won
        assert won[0].generation == 1
        current = PromotionLock(root, MODEL).current()
        assert current is not None and current.token == won[0].token


def _acquire_in_process(root: str, offset: float, barrier: object, out: object) -> None:
    lock = PromotionLock(Path(root), MODEL, lease_s=60, wait_s=0, clock=_clock(offset))
    barrier.wait()  # type: ignore[attr-defined]
    try:
        lease = lock.acquire()
    except LockTimeoutError:
        out.put(None)  # type: ignore[attr-defined]
    else:
        out.put(lease.generation)  # type: ignore[attr-defined]


def _process_race(root: Path, offset: float, n: int = 6) -> list[int | None]:
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [
        ctx.Process(target=_acquire_in_process, args=(str(root), offset, barrier, out))
        for _ in range(n)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    return results


@pytest.mark.slow
def test_exclusive_create_and_takeover_races_between_processes(tmp_path: Path) -> None:
    first = _process_race(tmp_path, offset=0.0)
    assert sorted(first, key=lambda g: g or 0) == [None] * 5 + [1], first
    # An hour later (by the contenders' clocks) generation 1 has expired: one takes it over.
    second = _process_race(tmp_path, offset=3600.0)
    assert sorted(second, key=lambda g: g or 0) == [None] * 5 + [2], second


def test_expired_lease_takeover_race_has_one_winner(tmp_path: Path) -> None:
    holder = PromotionLock(tmp_path, MODEL, lease_s=60)
    old = holder.acquire()
    # Not expired yet: nobody gets it.
    assert _race([PromotionLock(tmp_path, MODEL, wait_s=0) for _ in range(4)]) == []
    later = [
        PromotionLock(tmp_path, MODEL, lease_s=60, wait_s=0, clock=_clock(120))
        for _ in range(CONTENDERS)
    ]
    won = _race(later)
    assert len(won) == 1 and won[0].generation == old.generation + 1


def test_a_zombie_holder_is_fenced_off(tmp_path: Path) -> None:
    zombie = PromotionLock(tmp_path, MODEL, lease_s=60)
    stale = zombie.acquire()
    assert zombie.renew(stale).expires_at >= stale.expires_at  # still ours: renewing works
    successor = PromotionLock(tmp_path, MODEL, lease_s=60, clock=_clock(120))
    fresh = successor.acquire()  # the zombie's lease expired (by this clock): taken over
    with pytest.raises(LeaseLostError, match=f"generation {stale.generation}"):
        zombie.renew(stale)
    zombie.release(stale)  # a late release must not free the successor's lease
    assert successor.renew(fresh).generation == fresh.generation
    # Even by the zombie's own clock (lease not expired), it is not the current generation.
    with pytest.raises(LeaseLostError):
        zombie.renew(stale)


def test_an_expired_lease_is_refused_to_its_holder(tmp_path: Path) -> None:
    now = [1000.0]
    lock = PromotionLock(tmp_path, MODEL, lease_s=60, clock=lambda: now[0])
    lease = lock.acquire()
    now[0] += 55  # 5 s left, under the 6 s margin: a successor may be taking it over
    with pytest.raises(LeaseLostError, match="about to"):
        lock.renew(lease)
    now[0] += 6  # paused past its expiry, nobody took it over yet
    with pytest.raises(LeaseLostError, match="expired"):
        lock.renew(lease)
    now[0] = 1000.0 + 50  # 10 s left: renewing extends it by a whole lease
    assert lock.renew(lease).expires_at == 1050.0 + 60


def test_generations_increase_across_releases_and_old_files_are_pruned(tmp_path: Path) -> None:
    lock = PromotionLock(tmp_path, MODEL, wait_s=0)
    seen = []
    for _ in range(KEEP + 5):
        with lock.hold() as lease:
            seen.append(lease.generation)
            # Held: a second promoter of the same model does not get in.
            with pytest.raises(LockTimeoutError, match="locked by another promotion"):
                PromotionLock(tmp_path, MODEL, wait_s=0).acquire()
    assert seen == list(range(1, KEEP + 6))
    files = sorted(p.name for p in (tmp_path / MODEL).iterdir())
    assert len(files) == KEEP and files[-1] == f"{KEEP + 5:012d}.lease"
    last = json.loads((tmp_path / MODEL / files[-1]).read_text())
    assert last["released_at"] is not None
    # Another model's lock is independent.
    assert PromotionLock(tmp_path, "matchmaking-bangkok", wait_s=0).acquire().generation == 1


def test_lock_on_s3_with_conditional_puts(s3_endpoint: str) -> None:
    root = Location.of(f"{new_bucket()}/locks/promotion")
    won = _race([PromotionLock(root, MODEL, lease_s=60, wait_s=0) for _ in range(CONTENDERS)])
    assert len(won) == 1 and won[0].generation == 1
    holder = PromotionLock(root, MODEL, lease_s=60)
    with pytest.raises(LockTimeoutError):
        PromotionLock(root, MODEL, wait_s=0).acquire()
    later = [
        PromotionLock(root, MODEL, lease_s=60, wait_s=0, clock=_clock(120))
        for _ in range(CONTENDERS)
    ]
    [fresh] = _race(later)
    assert fresh.generation == 2
    with pytest.raises(LeaseLostError):
        holder.renew(won[0])
    later[0].release(fresh)
    assert PromotionLock(root, MODEL, wait_s=0).acquire().generation == 3


def test_the_lock_folder_defaults_to_the_lake_and_can_be_set(tmp_path: Path) -> None:
    assert Settings(data_dir=tmp_path).promotion_locks_dir == tmp_path / "lake/_locks/promotion"
    on_s3 = Settings(data_dir=tmp_path, lake_uri="s3://bucket/prod/lake/")
    assert on_s3.promotion_locks_dir == "s3://bucket/prod/lake/_locks/promotion"
    shared = Settings(data_dir=tmp_path, promotion_locks_uri=f"file://{tmp_path}/nfs/locks")
    assert shared.promotion_locks_dir == tmp_path / "nfs/locks"


def test_unusable_lock_locations_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="MATCHMAKING_PROMOTION_LOCKS_URI"):
        PromotionLock("memory://locks", MODEL)  # no exclusive create relied upon there
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.raises(StorageError, match=r"cannot list the promotion lock.*writable") as caught:
        PromotionLock(not_a_folder, MODEL).acquire()
    assert caught.value.exit_code == 3
