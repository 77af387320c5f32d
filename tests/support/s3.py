"""A local S3 (moto's server) for the lake on object storage, and fresh buckets on it.

``tests/conftest.py`` starts one server per session and xdist worker (``s3_endpoint``) for the
lake and registry tests.

The lake reaches it the way production reaches MinIO or a regional endpoint: botocore's
standard ``AWS_ENDPOINT_URL`` (or ``MATCHMAKING_LAKE_STORAGE_OPTIONS``), with dummy credentials.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator

import pytest

from support.processes import free_port

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    """The endpoint of a moto S3 server; the AWS variables point at it until exit."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per S3 request
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = pytest.MonkeyPatch()
    for key, value in {**AWS_ENV, "AWS_ENDPOINT_URL": endpoint}.items():
        env.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        env.delenv(key, raising=False)
    try:
        yield endpoint
    finally:
        env.undo()
        server.stop()


def new_bucket() -> str:
    """A fresh bucket; returns its ``s3://`` URI."""
    import s3fs

    name = f"lake-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(name)
    return f"s3://{name}"
