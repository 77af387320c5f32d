"""The promotion lock: a lease per registered model, taken by an atomic create-if-absent.

A model's lock is a folder of numbered lease files, ``<root>/<model>/<generation>.lease``
(``Settings.promotion_locks_dir``; by default ``<lake>/_locks/promotion``). The file with the
highest number is the current lease; its number is the **generation**, the fencing token.

- **Acquire**: read the highest lease. If there is none, or it is released or expired, create
  the next number with an exclusive create: ``os.link`` of a fully written temporary file (fails
  when the name exists; atomic on local disks and NFS) or, on S3, a ``PutObject`` with
  ``If-None-Match: *`` (fails with 412 when the key exists). Of all the processes that try the
  same number exactly one succeeds; the others read the new lease and wait. Taking over an
  expired lease is the same operation (creating the next number), so it has one winner too.
- **Renew** (``PromotionLock.renew``): the holder re-reads the highest lease, checks it is still
  its own with more than a margin left, and writes a later expiry into its own file. Only the
  holder ever rewrites a lease file after creating it, and a file that is no longer the highest
  means nothing, so this needs no compare-and-set.
- **Release**: the holder marks its own file released (the number stays, so generations keep
  increasing); older files beyond the last ``KEEP`` are pruned.

What a dead holder, a late zombie and a bypass can and cannot do is in docs/promotion.md.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Protocol, TypeVar

from fsspec import AbstractFileSystem

from matchmaking.errors import ConfigError, StorageError, TrackingError
from matchmaking.lake import storage
from matchmaking.lake.storage import LocationLike

logger = logging.getLogger(__name__)

SUFFIX = ".lease"
KEEP = 20  # lease files kept per model (the newest ones), for the record
_NAME = re.compile(r"^(\d{12})\.lease$")
T = TypeVar("T")


class LockTimeoutError(TrackingError):
    """Another promotion of the same model held the lock for longer than we wait."""


class LeaseLostError(TrackingError):
    """Our lease expired or was taken over: nothing may be moved under it any more."""


@dataclass(frozen=True)
class Lease:
    """One generation of a model's promotion lock, as written in its lease file."""

    model: str
    generation: int
    token: str
    owner: str
    acquired_at: float
    expires_at: float
    released_at: float | None = None

    def free_at(self, now: float) -> bool:
        """Whether anyone may take the next generation at time ``now``."""
        return self.released_at is not None or self.expires_at <= now

    def describe(self) -> str:
        expiry = datetime.fromtimestamp(self.expires_at, UTC).isoformat(timespec="seconds")
        return f"generation {self.generation} held by {self.owner} until {expiry}"


class _Store(Protocol):
    """Numbered lease files in one folder; ``create`` must be atomic create-if-absent."""

    def generations(self) -> list[int]: ...
    def read(self, generation: int) -> bytes | None: ...
    def create(self, generation: int, data: bytes) -> bool: ...
    def overwrite(self, generation: int, data: bytes) -> None: ...
    def delete(self, generation: int) -> None: ...


def _file_name(generation: int) -> str:
    return f"{generation:012d}{SUFFIX}"


class _LocalStore:
    """A folder on a local or shared (NFS) filesystem."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def generations(self) -> list[int]:
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return []
        return [int(m.group(1)) for n in names if (m := _NAME.match(n))]

    def read(self, generation: int) -> bytes | None:
        try:
            return (self.folder / _file_name(generation)).read_bytes()
        except FileNotFoundError:
            return None

    def _temporary(self, data: bytes) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{uuid.uuid4().hex}.tmp"
        with tmp.open("xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return tmp

    def create(self, generation: int, data: bytes) -> bool:
        # link() of a complete file: the name appears with its whole content or not at all,
        # and fails with EEXIST when the name exists (unlike rename, which would replace it).
        tmp = self._temporary(data)
        try:
            os.link(tmp, self.folder / _file_name(generation))
        except FileExistsError:
            return False
        finally:
            tmp.unlink()
        return True

    def overwrite(self, generation: int, data: bytes) -> None:
        os.replace(self._temporary(data), self.folder / _file_name(generation))

    def delete(self, generation: int) -> None:
        (self.folder / _file_name(generation)).unlink(missing_ok=True)


class _S3Store:
    """A prefix on S3 (or an S3-compatible store that honours ``If-None-Match: *``)."""

    def __init__(self, fs: AbstractFileSystem, prefix: str) -> None:
        self.fs = fs
        self.prefix = prefix

    def generations(self) -> list[int]:
        self.fs.invalidate_cache(self.prefix)
        try:
            names = self.fs.ls(self.prefix, detail=False)
        except FileNotFoundError:
            return []
        return [int(m.group(1)) for n in names if (m := _NAME.match(str(n).rsplit("/", 1)[-1]))]

    def read(self, generation: int) -> bytes | None:
        try:
            return bytes(self.fs.cat_file(f"{self.prefix}/{_file_name(generation)}"))
        except FileNotFoundError:
            return None

    def create(self, generation: int, data: bytes) -> bool:
        try:  # s3fs sends PutObject with IfNoneMatch="*"; a 412 becomes FileExistsError
            self.fs.pipe_file(f"{self.prefix}/{_file_name(generation)}", data, mode="create")
        except FileExistsError:
            return False
        return True

    def overwrite(self, generation: int, data: bytes) -> None:
        self.fs.pipe_file(f"{self.prefix}/{_file_name(generation)}", data)

    def delete(self, generation: int) -> None:
        with suppress(FileNotFoundError):
            self.fs.rm_file(f"{self.prefix}/{_file_name(generation)}")


def _store(root: LocationLike, model: str) -> _Store:
    folder = storage.join(root, model)
    if not storage.is_remote(folder):
        return _LocalStore(storage.local_path(folder))
    fs, prefix = storage.filesystem(str(folder))
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    if not protocols & {"s3", "s3a"}:
        raise ConfigError(
            f"the promotion lock needs an exclusive create, which this code only relies on for "
            f"local or shared filesystems and S3; {root} is {sorted(protocols)}. Set "
            "MATCHMAKING_PROMOTION_LOCKS_URI to a shared path or an s3:// prefix"
        )
    return _S3Store(fs, prefix)


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class PromotionLock:
    """The promotion lock of one registered model.

    Args:
        root: the folder holding every model's lease folder (``Settings.promotion_locks_dir``).
        model: the registered-model name.
        lease_s: how long a lease lasts without renewal.
        wait_s: how long ``acquire`` waits for a held lease before giving up.
        clock: wall-clock seconds (leases are compared across machines: keep clocks in sync).
    """

    def __init__(
        self,
        root: LocationLike,
        model: str,
        lease_s: float = 900.0,
        wait_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if lease_s <= 0 or wait_s < 0:
            raise ConfigError(f"lease_s must be > 0 and wait_s >= 0, got {lease_s}, {wait_s}")
        self.root = root
        self.model = model
        self.lease_s = lease_s
        self.wait_s = wait_s
        self.clock = clock
        self.margin_s = min(30.0, lease_s / 10)  # renew refuses with less than this left
        self._store = _store(root, model)

    def _io(self, what: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except OSError as exc:
            raise StorageError(
                f"{self.model}: cannot {what} the promotion lock under {self.root}: {exc}; "
                "check that the location is writable (MATCHMAKING_PROMOTION_LOCKS_URI)"
            ) from exc

    def _top(self) -> int:
        return max(self._io("list", self._store.generations), default=0)

    def _read(self, generation: int) -> Lease | None:
        raw = self._io("read", lambda: self._store.read(generation))
        if raw is None:
            return None
        try:
            fields = json.loads(raw)
            return Lease(**fields)
        except (ValueError, TypeError) as exc:
            # Only a person editing the folder writes anything else; a holder never does.
            logger.warning(
                "%s: unreadable lease %d (%s); treating it as free", self.model, generation, exc
            )
            return Lease(self.model, generation, "", "unreadable", 0.0, 0.0, 0.0)

    def current(self) -> Lease | None:
        """The newest lease of the model (held, expired or released), if any."""
        top = self._top()
        return self._read(top) if top else None

    def acquire(self) -> Lease:
        """Take the next generation once the current one is free; wait up to ``wait_s``.

        Raises:
            LockTimeoutError: the lease stayed held (it names the holder and its expiry).
            StorageError: the lock location cannot be read or written.
        """
        deadline = time.monotonic() + self.wait_s
        while True:
            top = self._top()
            held = self._read(top) if top else None
            now = self.clock()
            if top == 0 or (held is not None and held.free_at(now)):
                if held is not None and held.released_at is None:
                    logger.warning(
                        "%s: taking over an expired lease (%s)", self.model, held.describe()
                    )
                lease = self._try_create(top + 1, now)
                if lease is not None:
                    return lease
                continue  # someone else created that generation first: read it
            if held is not None and time.monotonic() > deadline:
                raise LockTimeoutError(
                    f"{self.model} is locked by another promotion ({held.describe()}); retry "
                    f"after it ends, or after the lease expires if that process is gone "
                    f"(lock files under {storage.join(self.root, self.model)})"
                )
            time.sleep(random.uniform(0.05, 0.3))

    def _try_create(self, generation: int, now: float) -> Lease | None:
        """Create lease ``generation``; None when another process created it first."""
        lease = Lease(self.model, generation, uuid.uuid4().hex, _owner(), now, now + self.lease_s)
        data = json.dumps(asdict(lease)).encode()
        if not self._io("create", lambda: self._store.create(generation, data)):
            return None
        if self._top() != generation:
            # Our listing was so old that this number had been pruned: it is not the next one.
            self._io("delete", lambda: self._store.delete(generation))
            return None
        self._prune(generation)
        logger.info("%s: promotion lock taken (%s)", self.model, lease.describe())
        return lease

    def renew(self, lease: Lease) -> Lease:
        """Check ``lease`` is still the model's current, unexpired lease; extend it.

        Call it right before acting under the lock: a holder that was paused past its expiry
        (and taken over) learns it here, before it moves anything. A lease with less than
        ``margin_s`` left is not renewed either: a successor may already have read it as
        expired and be about to create the next generation.

        Raises:
            LeaseLostError: a later generation exists, or ours expired, is about to, or was
                released.
        """
        self._verify(lease, self.margin_s)
        renewed = replace(lease, expires_at=self.clock() + self.lease_s)
        data = json.dumps(asdict(renewed)).encode()
        self._io("renew", lambda: self._store.overwrite(lease.generation, data))
        self._verify(renewed)  # a takeover between the check and the write would show here
        return renewed

    def _verify(self, lease: Lease, margin_s: float = 0.0) -> None:
        top = self._top()
        current = self._read(top) if top else None
        if top != lease.generation or current is None or current.token != lease.token:
            newer = current.describe() if current else "no lease at all"
            raise LeaseLostError(
                f"{self.model}: our promotion lock (generation {lease.generation}) was taken "
                f"over, now {newer}; nothing was moved by this process, rerun it"
            )
        if current.free_at(self.clock() + margin_s):
            raise LeaseLostError(
                f"{self.model}: our promotion lock (generation {lease.generation}) expired, is "
                f"about to (less than {margin_s:.0f} s left) or was released; nothing was moved "
                "by this process, rerun it (or raise MATCHMAKING_PROMOTION_LEASE_S)"
            )

    def release(self, lease: Lease) -> None:
        """Mark ``lease`` released if it is still the current one (else leave everything)."""
        current = self.current()
        if current is None or (current.generation, current.token) != (
            lease.generation,
            lease.token,
        ):
            logger.warning(
                "%s: not releasing generation %d: the lock is now %s",
                self.model,
                lease.generation,
                current.describe() if current else "gone",
            )
            return
        done = replace(lease, released_at=self.clock())
        data = json.dumps(asdict(done)).encode()
        self._io("release", lambda: self._store.overwrite(lease.generation, data))
        logger.info("%s: promotion lock released (generation %d)", self.model, lease.generation)

    def _prune(self, newest: int) -> None:
        for generation in self._io("list", self._store.generations):
            if generation <= newest - KEEP:
                self._io("prune", partial(self._store.delete, generation))

    @contextmanager
    def hold(self) -> Iterator[Lease]:
        """``acquire`` ... ``release``, also when the body raises."""
        lease = self.acquire()
        try:
            yield lease
        finally:
            self.release(lease)
