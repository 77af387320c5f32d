"""Live plumbing for the serving tests: a real uvicorn server in a thread, a TCP proxy that
can cut the service off from the registry, and request builders."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import uvicorn
from fastapi import FastAPI

JAKARTA = (-6.2088, 106.8456)
SURABAYA = (-7.2575, 112.7521)
BANDUNG = (-6.9175, 107.6191)


class ServerThread:
    """uvicorn serving ``app`` on a free 127.0.0.1 port, in a daemon thread."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=0, log_level="warning", access_log=False, lifespan="on"
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = ""

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


class TcpProxy:
    """A loopback TCP forwarder to ``target`` that can be cut (connection refused) and restored
    on the same port: a registry outage without stopping the shared tracking server."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TcpProxy:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self.port = sock.getsockname()[1]
        self._listener = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()
        return self

    def cut(self) -> None:
        """Refuse new connections and drop the open ones."""
        with self._lock:
            if self._listener is not None:
                # shutdown() wakes the thread blocked in accept(); close() alone would not.
                with contextlib.suppress(OSError):
                    self._listener.shutdown(socket.SHUT_RDWR)
                self._listener.close()
                self._listener = None
            for c in self._conns:
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)
                c.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


def rank_body(
    city: str = "jakarta",
    n: int = 5,
    seed: int = 0,
    centre: tuple[float, float] = JAKARTA,
    with_eta: bool = True,
    driver_prefix: str = "d-",
) -> dict[str, Any]:
    """A valid /v1/rank body with ``n`` candidates near the pickup."""
    rng = np.random.default_rng(seed)
    lat, lng = centre
    return {
        "booking": {
            "booking_id": f"b-{seed}",
            "city": city,
            "pickup": {"lat": lat, "lng": lng},
            "dropoff": {"lat": lat - 0.05, "lng": lng + 0.04},
            "requested_at": "2026-11-27T08:15:00+07:00",
        },
        "candidates": [
            {
                "driver_id": f"{driver_prefix}{i}",
                "location": {
                    "lat": lat + float(rng.uniform(-0.02, 0.02)),
                    "lng": lng + float(rng.uniform(-0.02, 0.02)),
                },
                "rating": round(float(rng.uniform(3.5, 5.0)), 2),
                "home": {
                    "lat": lat + float(rng.uniform(-0.1, 0.1)),
                    "lng": lng + float(rng.uniform(-0.1, 0.1)),
                },
                **({"eta_seconds": float(rng.uniform(60, 600))} if with_eta else {}),
            }
            for i in range(n)
        ],
    }


@dataclass(frozen=True)
class Answer:
    """One request of a load client: when it started, how long it took, what came back."""

    started: float  # time.monotonic()
    seconds: float
    version: str | None  # the model version that answered; None when the request failed
    error: str | None = None


class Load:
    """Closed-loop clients, each posting ``body`` to ``path`` in its own thread until stopped.

    Every request is recorded; anything but a 200 with a version is a failure, transport errors
    (refused or reset connections, timeouts) and unreadable answers included.
    """

    def __init__(
        self,
        url: str,
        body: dict[str, Any],
        clients: int = 2,
        path: str = "/v1/rank",
        timeout: float = 30.0,
    ) -> None:
        self.url, self.body, self.path, self.timeout = url, body, path, timeout
        self.answers: list[list[Answer]] = [[] for _ in range(clients)]
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._client, args=(k,), daemon=True) for k in range(clients)
        ]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for k, t in enumerate(self._threads):
            t.join(timeout=60)
            if t.is_alive():
                self.answers[k].append(Answer(time.monotonic(), 0.0, None, "client hung"))

    def _client(self, k: int) -> None:
        with httpx.Client(base_url=self.url, timeout=self.timeout) as c:
            while not self._stop.is_set():
                started = time.monotonic()
                version: str | None = None
                error: str | None = None
                try:
                    r = c.post(self.path, json=self.body)
                    if r.status_code == 200:
                        version = str(r.json()["version"])
                    else:
                        error = f"{r.status_code} {r.text[:200]}"
                except Exception as exc:  # a failure like any other, never lost with the thread
                    error = f"{type(exc).__name__}: {exc}"
                self.answers[k].append(Answer(started, time.monotonic() - started, version, error))
                if error is not None:
                    time.sleep(0.05)  # no busy loop against a dead server

    def errors(self) -> list[str]:
        return [a.error for answers in self.answers for a in answers if a.error is not None]

    def latest(self) -> list[str | None]:
        """Each client's last answered version (None before its first answer)."""
        return [answers[-1].version if answers else None for answers in self.answers]

    def count(self) -> int:
        return sum(len(answers) for answers in self.answers)

    def seconds(self, since: float, until: float) -> list[float]:
        """Latencies of the requests started within ``[since, until)``."""
        return [
            a.seconds for answers in self.answers for a in answers if since <= a.started < until
        ]

    def wait_until_all_answer(self, version: str, timeout: float) -> None:
        """Until every client's last answer came from ``version``."""
        wait_for(lambda: self.latest() == [version] * len(self.answers), timeout, f"v{version}")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def metric(client: httpx.Client, name: str, **labels: str) -> float | None:
    """A sample's value from /metrics (None when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    key = f"{name}{{{want}}}" if labels else name
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(key + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


class CountingProxy:
    """An HTTP reverse proxy to the tracking server that records every request it forwards
    (method and path): what the service really asks the registry, counted on the wire."""

    def __init__(self, target: str) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit

        parts = urlsplit(target)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        self.requests: list[tuple[str, str]] = []
        lock = threading.Lock()
        record = self.requests

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _forward(self) -> None:
                import http.client

                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with lock:
                    record.append((self.command, self.path))
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")
                }
                upstream = http.client.HTTPConnection(host, port, timeout=30)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    resp = upstream.getresponse()
                    data = resp.read()
                finally:
                    upstream.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def take(self) -> list[tuple[str, str]]:
        """The requests recorded since the last ``take`` (and forget them)."""
        out = list(self.requests)
        self.requests.clear()
        return out
