"""Where data lives: a local path, or a URI on any fsspec filesystem (``s3://``, ``gs://``, ...).

A *location* is a ``Path`` (or a plain path string, or a ``file://`` URI) for the local
filesystem, or a URI string for object storage. Local locations keep the fast path of the
standard library (and atomic ``os.rename`` publication); remote ones go through fsspec.

Remote filesystems take their options from ``MATCHMAKING_LAKE_STORAGE_OPTIONS`` (a JSON
object passed to the fsspec filesystem, e.g. ``{"client_kwargs": {"endpoint_url":
"http://minio:9000"}}``), on top of the provider's own configuration (``AWS_*`` variables,
``AWS_ENDPOINT_URL``, instance roles...).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs

from matchmaking.errors import ConfigError

Location = str | Path
STORAGE_OPTIONS_ENV = "MATCHMAKING_LAKE_STORAGE_OPTIONS"


def is_remote(location: Location) -> bool:
    """Whether ``location`` is a URI of a non-local filesystem (``s3://...``)."""
    if isinstance(location, Path):
        return False
    scheme = urlparse(location).scheme
    return scheme not in ("", "file") and len(scheme) > 1  # one letter: a Windows drive


def local_path(location: Location) -> Path:
    """A local location as a ``Path`` (``file://`` URIs decoded; not made absolute).

    Raises:
        ConfigError: ``location`` is on a remote filesystem.
    """
    if isinstance(location, Path):
        return location
    if is_remote(location):
        raise ConfigError(f"{location} is not a local path")
    parsed = urlparse(location)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    return Path(location).expanduser()


def location(value: Location) -> Location:
    """Normalise: a ``Path`` for local locations, the URI (no trailing ``/``) for remote ones."""
    if is_remote(value):
        return str(value).rstrip("/")
    return local_path(value)


def join(base: Location, *parts: str) -> Location:
    """``base / part / ...`` for either kind of location."""
    base = location(base)
    if isinstance(base, Path):
        return base.joinpath(*parts)
    return "/".join([base, *parts])


def as_uri(value: Location) -> str:
    """The location as a URI: ``file:///abs/path`` for local ones."""
    value = location(value)
    if isinstance(value, Path):
        return value.resolve().as_uri()
    return value


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


def filesystem(uri: str) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem of a remote URI and the path on it (no protocol)."""
    fs, path = url_to_fs(uri, **storage_options())
    return fs, path


def read_bytes(value: Location) -> bytes:
    """The whole content of a file."""
    value = location(value)
    if isinstance(value, Path):
        return value.read_bytes()
    fs, path = filesystem(value)
    return bytes(fs.cat_file(path))


def write_bytes(value: Location, data: bytes) -> None:
    """Write a whole file (creating parent directories for local paths)."""
    value = location(value)
    if isinstance(value, Path):
        value.parent.mkdir(parents=True, exist_ok=True)
        value.write_bytes(data)
        return
    fs, path = filesystem(value)
    fs.pipe_file(path, data)


def exists(value: Location) -> bool:
    """Whether a file or directory exists (a remote prefix exists when it holds objects)."""
    value = location(value)
    if isinstance(value, Path):
        return value.exists()
    fs, path = filesystem(value)
    fs.invalidate_cache(path)
    return bool(fs.exists(path))


def digest(value: Location) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    value = location(value)
    if isinstance(value, Path):
        with value.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    fs, path = filesystem(value)
    with fs.open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(value: Location, target: Path) -> Path:
    """A local copy of a file at ``target`` (a local file is copied too)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(read_bytes(value))
    return target


def local_file(value: Location, scratch: Path) -> Path:
    """The file as a local path: itself when local, else a copy downloaded into ``scratch``."""
    value = location(value)
    if isinstance(value, Path):
        return value
    return download(value, scratch / value.rstrip("/").rsplit("/", 1)[-1])
