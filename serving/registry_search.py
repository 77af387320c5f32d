"""The poll's registry search, read without MLflow's protobuf entities.

``MlflowClient.search_registered_models`` turns each page into protobuf messages
(``parse_dict``, field by field in Python) and then into entities: about 90 ms of CPU for a
page of 1,000 models on a 2-core machine, all of it holding the GIL, so every poll stalled the
requests in flight for that long (the fleet benchmark's warm p99 at half peak followed the poll's
duration). Against a tracking server (a REST registry), the page is fetched with MLflow's own
``http_request`` (its credentials, retries and workspace header) from the documented REST
endpoint and decoded by msgspec into the few fields the poll reads: about 4 ms a page. Any
other registry (a database URI, a plugin store) goes through the client as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
from mlflow.exceptions import MlflowException
from mlflow.store.model_registry.rest_store import RestStore
from mlflow.tracking import MlflowClient
from mlflow.utils.rest_utils import http_request, verify_rest_response

from matchmaking.registry.conventions import PRODUCTION_STAGE

#: The REST API's registered-model search (MLflow REST API, ``GET``).
SEARCH_ENDPOINT = "/api/2.0/mlflow/registered-models/search"


@dataclass(frozen=True)
class StagedVersion:
    """The parts of a version the poll uses (a ``latest_versions`` entry)."""

    version: str
    run_id: str
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelEntry:
    """One registered model of a search page: its aliases, tags and Production-stage version."""

    name: str
    aliases: dict[str, str]
    tags: dict[str, str]
    staged: StagedVersion | None  # the latest version in ``stage``, if any


class _Tag(msgspec.Struct):
    key: str
    value: str = ""


class _Alias(msgspec.Struct):
    alias: str
    version: str


class _Version(msgspec.Struct):
    version: str
    current_stage: str = ""
    run_id: str = ""
    tags: list[_Tag] = []


class _Model(msgspec.Struct):
    name: str
    latest_versions: list[_Version] = []
    aliases: list[_Alias] = []
    tags: list[_Tag] = []


class _Page(msgspec.Struct):
    registered_models: list[_Model] = []
    next_page_token: str = ""


_decode_page = msgspec.json.Decoder(_Page).decode


def _rest_store(client: MlflowClient) -> RestStore | None:
    """The client's registry store when it is MLflow's plain REST store with the two members
    the fast path uses (MLflow internals: a release without them falls back to the client),
    else None."""
    try:
        store = client._get_registry_client().store
    except (AttributeError, MlflowException):
        return None
    if type(store) is not RestStore or not all(
        hasattr(store, m) for m in ("get_host_creds", "_validate_workspace_support_if_specified")
    ):
        return None
    return store


def _rest_pages(
    store: RestStore, filter_string: str, page_size: int, on_call: Callable[[], None]
) -> Iterator[list[ModelEntry]]:
    token = ""
    while True:
        on_call()
        params: dict[str, Any] = {"filter": filter_string, "max_results": page_size}
        if token:
            params["page_token"] = token
        store._validate_workspace_support_if_specified()
        response = http_request(store.get_host_creds(), SEARCH_ENDPOINT, "GET", params=params)
        response = verify_rest_response(response, SEARCH_ENDPOINT)
        try:
            page = _decode_page(response.content)
        except msgspec.DecodeError as exc:
            raise MlflowException(f"unreadable answer from {SEARCH_ENDPOINT}: {exc}") from exc
        yield [
            ModelEntry(
                m.name,
                {a.alias: a.version for a in m.aliases},
                {t.key: t.value for t in m.tags},
                _staged(
                    (v.current_stage, v.version, v.run_id, {t.key: t.value for t in v.tags})
                    for v in m.latest_versions
                ),
            )
            for m in page.registered_models
        ]
        token = page.next_page_token
        if not token:
            return


def _client_pages(
    client: MlflowClient, filter_string: str, page_size: int, on_call: Callable[[], None]
) -> Iterator[list[ModelEntry]]:
    token: str | None = None
    while True:
        on_call()
        page = client.search_registered_models(
            filter_string=filter_string, max_results=page_size, page_token=token
        )
        yield [
            ModelEntry(
                rm.name,
                {alias: str(v) for alias, v in (rm.aliases or {}).items()},
                dict(rm.tags or {}),
                _staged(
                    (mv.current_stage, str(mv.version), mv.run_id or "", dict(mv.tags or {}))
                    for mv in rm.latest_versions or []
                ),
            )
            for rm in page
        ]
        token = page.token
        if not token:
            return


def _staged(versions: Iterator[tuple[str, str, str, dict[str, str]]]) -> StagedVersion | None:
    for stage, version, run_id, tags in versions:
        if stage == PRODUCTION_STAGE:
            return StagedVersion(version, run_id, tags)
    return None


def search_pages(
    client: MlflowClient,
    filter_string: str,
    page_size: int,
    on_call: Callable[[], None] = lambda: None,
) -> Iterator[list[ModelEntry]]:
    """The registered models matching ``filter_string``, one list per page (one registry call
    each, ``on_call`` run before it): decoded by msgspec from a tracking server, through the
    client otherwise.

    Raises:
        MlflowException, OSError: the registry failed or could not be reached.
    """
    store = _rest_store(client)
    if store is None:
        return _client_pages(client, filter_string, page_size, on_call)
    return _rest_pages(store, filter_string, page_size, on_call)
