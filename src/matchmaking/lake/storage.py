"""Where data lives: one ``Location`` type for a local path or a URI on any fsspec filesystem.

A ``Location`` is immutable: a protocol (``file`` for the local filesystem, else the URI
scheme: ``s3``, ``gs``, ``memory``...) and a path on that filesystem. Every difference between
the local filesystem and object storage lives in this class, nowhere else: local locations
keep the fast paths of the standard library, pyarrow and DuckDB (plain paths, ``os.rename``
publication), remote ones go through their fsspec filesystem (whole-object puts, the
``_SUCCESS`` marker written last). ``Location.of`` converts what users give (a ``Path``, a
path string, a ``file://`` URI, an object-storage URI) once, at the boundary (settings, CLI);
every public lake function also accepts any of them (``LocationLike``).

Remote filesystems take their options from ``MATCHMAKING_LAKE_STORAGE_OPTIONS`` (a JSON
object passed to the fsspec filesystem, e.g. ``{"client_kwargs": {"endpoint_url":
"http://minio:9000"}}``), on top of the provider's own configuration (``AWS_*`` variables,
``AWS_ENDPOINT_URL``, instance roles...).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal
from urllib.parse import unquote, urlparse

from fsspec import AbstractFileSystem

from matchmaking.errors import ConfigError

STORAGE_OPTIONS_ENV = "MATCHMAKING_LAKE_STORAGE_OPTIONS"
LOCAL = "file"


def _parse(value: str | os.PathLike[str]) -> tuple[str, str]:
    """``(protocol, path)`` of a user-given location; local paths are not made absolute."""
    if isinstance(value, Path):
        return LOCAL, str(value)
    text = os.fspath(value)
    scheme = urlparse(text).scheme
    if scheme not in ("", LOCAL) and len(scheme) > 1:  # one letter: a Windows drive
        return scheme, text.split("://", 1)[-1].rstrip("/")
    if scheme == LOCAL:
        return LOCAL, str(Path(unquote(urlparse(text).path)))
    return LOCAL, str(Path(text).expanduser())


@dataclass(frozen=True)
class Location:
    """A file or directory on the local filesystem or on an fsspec one (immutable, hashable).

    ``loc / "name"`` joins; ``str(loc)`` is the path (local) or the URI (remote), what
    messages and manifests show; ``os.fspath`` works for local locations only.
    """

    protocol: str
    path: str  # on the filesystem: an OS path locally, ``bucket/key`` on object storage
    _fs: list[AbstractFileSystem] = field(default_factory=list, compare=False, repr=False)

    # -- making and naming -----------------------------------------------------------------

    @classmethod
    def of(cls, value: LocationLike) -> Location:
        """The location of a ``Path``, a path string, a ``file://`` or an fsspec URI."""
        if isinstance(value, Location):
            return value
        return cls(*_parse(value))

    def _child(self, path: str) -> Location:
        return Location(self.protocol, path, self._fs)  # shares the filesystem

    @property
    def is_local(self) -> bool:
        return self.protocol == LOCAL

    @property
    def local_path(self) -> Path:
        """The local path (for the standard library, pyarrow and DuckDB fast paths).

        Raises:
            ConfigError: the location is on a remote filesystem.
        """
        if not self.is_local:
            raise ConfigError(f"{self} is not a local path")
        return Path(self.path)

    @property
    def fs(self) -> AbstractFileSystem:
        """The fsspec filesystem (``LocalFileSystem`` locally; options from the environment)."""
        if not self._fs:
            import fsspec

            options = {} if self.is_local else storage_options()
            self._fs.append(fsspec.filesystem(self.protocol, **options))
        return self._fs[0]

    @property
    def uri(self) -> str:
        """``file:///abs/path`` locally, the URI remotely."""
        if self.is_local:
            return Path(self.path).resolve().as_uri()
        return f"{self.protocol}://{self.path}"

    def as_uri(self) -> str:
        return self.uri

    def absolute(self) -> Location:
        return self._child(str(Path(self.path).absolute())) if self.is_local else self

    def resolve(self) -> Location:
        return self._child(str(Path(self.path).resolve())) if self.is_local else self

    def joinpath(self, *parts: str) -> Location:
        if self.is_local:
            return self._child(str(Path(self.path).joinpath(*parts)))
        return self._child("/".join([self.path, *(p.strip("/") for p in parts)]))

    def __truediv__(self, part: str) -> Location:
        return self.joinpath(part)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/" if not self.is_local else os.sep, 1)[-1]

    @property
    def parent(self) -> Location:
        if self.is_local:
            return self._child(str(Path(self.path).parent))
        return self._child(self.path.rstrip("/").rsplit("/", 1)[0])

    def __str__(self) -> str:
        return self.path if self.is_local else self.uri

    def __fspath__(self) -> str:
        if not self.is_local:
            raise TypeError(f"{self} is on {self.protocol}://, not the local filesystem")
        return self.path

    def __eq__(self, other: object) -> bool:
        """Equal to another location, or to a ``Path`` or string naming the same place."""
        if isinstance(other, Location):
            return (self.protocol, self.path) == (other.protocol, other.path)
        if isinstance(other, str | Path):
            return (self.protocol, self.path) == _parse(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.protocol, self.path))

    # -- reading ---------------------------------------------------------------------------

    def _fresh(self) -> str:
        """The path, after dropping the remote filesystem's listing cache for it."""
        self.fs.invalidate_cache(self.path)
        return self.path

    def exists(self) -> bool:
        """Whether a file or directory exists (a remote prefix exists when it holds objects)."""
        if self.is_local:
            return os.path.exists(self.path)
        return bool(self.fs.exists(self._fresh()))

    def is_file(self) -> bool:
        if self.is_local:
            return os.path.isfile(self.path)
        return bool(self.fs.isfile(self._fresh()))

    def is_dir(self) -> bool:
        if self.is_local:
            return os.path.isdir(self.path)
        return bool(self.fs.isdir(self._fresh()))

    def read_bytes(self) -> bytes:
        if self.is_local:
            return Path(self.path).read_bytes()
        return bytes(self.fs.cat_file(self.path))

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def open(self, mode: str = "rb") -> IO[Any]:
        """A file object (binary by default); writing creates parent directories locally."""
        if self.is_local:
            if "w" in mode or "a" in mode:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            return open(self.path, mode)
        handle: IO[Any] = self.fs.open(self.path, mode)
        return handle

    def arrow(self) -> tuple[str, AbstractFileSystem | None]:
        """``(path, filesystem)`` for pyarrow: no filesystem locally (its native one)."""
        return (self.path, None) if self.is_local else (self.path, self.fs)

    def engine_source(self) -> tuple[str, AbstractFileSystem | None]:
        """``(name, filesystem)`` for an engine that reads by name (DuckDB): the plain path
        locally (its native reader, no filesystem to register), the URI and the fsspec
        filesystem to register for it remotely."""
        return (self.path, None) if self.is_local else (self.uri, self.fs)

    def children(self, kind: Literal["file", "directory"] | None = None) -> list[Location]:
        """The entries directly under this directory, sorted by name (none when it is not
        one); ``kind`` keeps only files or only directories."""
        if self.is_local:
            try:
                entries = list(os.scandir(self.path))
            except (FileNotFoundError, NotADirectoryError):
                return []
            found = [
                (e.name, e.is_dir())
                for e in entries
                if kind is None or e.is_dir() == (kind == "directory")
            ]
        else:
            try:
                listed = self.fs.ls(self._fresh(), detail=True)
            except FileNotFoundError:
                return []
            found = [
                (str(e["name"]).rstrip("/").rsplit("/", 1)[-1], e["type"] == "directory")
                for e in listed
                if kind is None or e["type"] == kind
            ]
        return [self / name for name, _ in sorted(found)]

    def iterdir(self) -> Iterator[Location]:
        return iter(self.children())

    def glob(self, pattern: str) -> list[Location]:
        """Entries matching ``pattern`` (``*/date=*/_SUCCESS``) under this directory, sorted."""
        if self.is_local:
            return sorted(self._child(str(p)) for p in Path(self.path).glob(pattern))
        matches = self.fs.glob(f"{self._fresh()}/{pattern}")
        return sorted(self._child(str(m).rstrip("/")) for m in matches)

    def rglob(self, pattern: str) -> list[Location]:
        return self.glob(f"**/{pattern}")

    def __lt__(self, other: Location) -> bool:
        return (self.protocol, self.path) < (other.protocol, other.path)

    def modified(self) -> float:
        """When the file was last written (epoch seconds)."""
        if self.is_local:
            return os.stat(self.path).st_mtime
        return float(self.fs.modified(self.path).timestamp())

    def digest(self) -> str:
        """sha256 of the file's bytes."""
        h = hashlib.sha256()
        with self.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    # -- writing ---------------------------------------------------------------------------

    def mkdir(self, parents: bool = True, exist_ok: bool = True) -> None:
        """Create the directory (and its parents) locally; object storage has no directories."""
        if self.is_local:
            Path(self.path).mkdir(parents=parents, exist_ok=exist_ok)

    def touch(self) -> None:
        """An empty file (kept if it exists locally)."""
        if self.is_local:
            Path(self.path).touch()
        else:
            self.write_bytes(b"")

    def unlink(self, missing_ok: bool = False) -> None:
        """Delete a file."""
        if self.is_local:
            Path(self.path).unlink(missing_ok=missing_ok)
        elif not missing_ok or self.fs.exists(self._fresh()):
            self.fs.rm_file(self.path)

    def relative_to(self, other: LocationLike) -> PurePosixPath:
        """The path below ``other`` (a location on the same filesystem)."""
        base = Location.of(other)
        if base.protocol != self.protocol:
            raise ValueError(f"{self} is not under {base}")
        return PurePosixPath(Path(self.path).relative_to(base.path).as_posix())

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).stem

    def write_bytes(self, data: bytes) -> None:
        """Write a whole file (creating parent directories locally; one object remotely)."""
        if self.is_local:
            path = Path(self.path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            return
        self.fs.pipe_file(self.path, data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def remove(self) -> None:
        """Delete the file or the directory tree, if there is one."""
        if self.is_local:
            if os.path.isdir(self.path):
                shutil.rmtree(self.path, ignore_errors=True)
            else:
                Path(self.path).unlink(missing_ok=True)
            return
        if self.fs.exists(self._fresh()):
            self.fs.rm(self.path, recursive=True)

    def write_atomic(self, write: Callable[[Location], None]) -> None:
        """Publish one file whole: ``write(target)`` writes a hidden sibling renamed over this
        file locally (``os.replace``), or this object itself remotely (an object appears only
        when its upload completes). A failure leaves no partial file visible."""
        if not self.is_local:
            write(self)
            return
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        tmp = self.parent / f".{self.name}.tmp-{uuid.uuid4().hex}"
        try:
            write(tmp)
            os.replace(tmp.path, self.path)
        except BaseException:
            Path(tmp.path).unlink(missing_ok=True)
            raise

    def stage(self, marker: str | None = None, staging_prefix: str | None = None) -> Location:
        """Where to write this directory's files before ``publish``: a fresh hidden sibling
        locally (``.<staging_prefix or name>.tmp-<uuid>``); remotely this prefix itself, first
        cleared of what an earlier writer left (its ``marker`` removed first, so readers stop
        seeing it before its files go)."""
        if not self.is_local:
            if marker and self.fs.exists(f"{self._fresh()}/{marker}"):
                self.fs.rm_file(f"{self.path}/{marker}")
            self.remove()
            return self
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        prefix = self.name if staging_prefix is None else staging_prefix
        staged = self.parent / f".{prefix + '.' if prefix else ''}tmp-{uuid.uuid4().hex}"
        os.mkdir(staged.path)
        return staged

    def publish(self, staged: Location) -> None:
        """Make ``staged`` (from ``stage``, its marker written) this directory. Locally a
        rename; an existing directory is renamed away first and deleted after, so readers see
        the old or the new one, never a mix. Remotely nothing is left to do: the files are in
        place and the marker, written last, published them."""
        if not self.is_local or staged == self:
            return
        if os.path.exists(self.path):
            old = self.parent / f".{self.name}.old-{uuid.uuid4().hex}"
            os.rename(self.path, old.path)
            os.rename(staged.path, self.path)
            shutil.rmtree(old.path, ignore_errors=True)
        else:
            os.rename(staged.path, self.path)


LocationLike = str | Path | Location


def storage_options() -> dict[str, object]:
    """The fsspec options from ``MATCHMAKING_LAKE_STORAGE_OPTIONS`` (empty when unset).

    Raises:
        ConfigError: the variable is not a JSON object.
    """
    raw = os.environ.get(STORAGE_OPTIONS_ENV, "").strip()
    if not raw:
        return {}
    try:
        options = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{STORAGE_OPTIONS_ENV} is not valid JSON: {exc}") from exc
    if not isinstance(options, dict):
        raise ConfigError(f"{STORAGE_OPTIONS_ENV} must be a JSON object, got {raw!r}")
    return options


# -- the functional spelling (kept for callers written against it) ----------------------------


def location(value: LocationLike) -> Location:
    """``Location.of(value)``."""
    return Location.of(value)


def is_remote(value: LocationLike) -> bool:
    """Whether ``value`` is on a non-local filesystem (``s3://...``)."""
    return not Location.of(value).is_local


def local_path(value: LocationLike) -> Path:
    """A local location as a ``Path`` (``file://`` URIs decoded; not made absolute).

    Raises:
        ConfigError: ``value`` is on a remote filesystem.
    """
    return Location.of(value).local_path


def join(base: LocationLike, *parts: str) -> Location:
    """``base / part / ...``."""
    return Location.of(base).joinpath(*parts)


def as_uri(value: LocationLike) -> str:
    """The location as a URI: ``file:///abs/path`` for local ones."""
    return Location.of(value).uri


def filesystem(value: LocationLike) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem of a location and the path on it (no protocol)."""
    loc = Location.of(value)
    return loc.fs, loc.path


def read_bytes(value: LocationLike) -> bytes:
    """The whole content of a file."""
    return Location.of(value).read_bytes()


def write_bytes(value: LocationLike, data: bytes) -> None:
    """Write a whole file (creating parent directories for local paths)."""
    Location.of(value).write_bytes(data)


def exists(value: LocationLike) -> bool:
    """Whether a file or directory exists (a remote prefix exists when it holds objects)."""
    return Location.of(value).exists()


def digest(value: LocationLike) -> str:
    """sha256 of a file's bytes."""
    return Location.of(value).digest()


def download(value: LocationLike, target: Path) -> Path:
    """A local copy of a file at ``target`` (a local file is copied too)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(read_bytes(value))
    return target


def local_file(value: LocationLike, scratch: Path) -> Path:
    """The file as a local path: itself when local, else a copy downloaded into ``scratch``."""
    loc = Location.of(value)
    return loc.local_path if loc.is_local else download(loc, scratch / loc.name)
