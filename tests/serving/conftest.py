"""Fixtures of the serving tests: models registered on the real tracking server, live apps."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.live import ServerThread
from support.registered import Registered, serve_settings

from serving.app import create_app


@pytest.fixture(scope="module")
def registered(tracking_server, tmp_path_factory: pytest.TempPathFactory) -> Registered:  # type: ignore[no-untyped-def]
    """Jakarta v1 and Surabaya v1, both at alias ``production``, under a module-unique prefix."""
    tmp = tmp_path_factory.mktemp("serving-models")
    reg = Registered(uri=tracking_server.uri, prefix=f"svc{uuid.uuid4().hex[:8]}", tmp=tmp)
    for city, seed in (("jakarta", 1), ("surabaya", 2)):
        reg.register(city, seed)
    return reg


@pytest.fixture
def own_registry(tracking_server, tmp_path: Path) -> Registered:  # type: ignore[no-untyped-def]
    """An empty registry space of the test's own (a fresh model-name prefix), for tests that
    register, promote or roll back: the module's ``registered`` and ``live`` stay as every
    other test of the module expects them, whatever order the tests run in."""
    return Registered(uri=tracking_server.uri, prefix=f"own{uuid.uuid4().hex[:8]}", tmp=tmp_path)


@pytest.fixture(scope="module")
def live(registered: Registered) -> Iterator[ServerThread]:
    """The service under test, on a real uvicorn server, Jakarta preloaded."""
    with ServerThread(create_app(serve_settings(registered))) as server:
        yield server
