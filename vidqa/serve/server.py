"""Run the app on uvicorn: in the foreground (``vidqa serve``) or on a background thread (tests, benchmarks).

``Server`` binds its socket itself (``port=0`` takes a free port, read back from ``url``), warms the
engine up before or after it starts listening (``/health`` says 503 until the engine is ready), and
``stop()`` shuts uvicorn down and waits for its thread.
"""

from __future__ import annotations

import socket
import sys
import threading

import uvicorn

from vidqa.serve.app import create_app
from vidqa.serve.engine import Engine
from vidqa.serve.schema import Limits


# The answer lane decodes on its own thread, holding the GIL between CUDA calls, while the event loop
# needs it several times to send one chunk; at Python's default 5 ms switch interval each wait can cost
# up to 5 ms. On the H200 machine a client saw its first chunk 31 ms after the server's own time to first
# token (benchmarks/NOTES.md, session 7). A shorter interval hands the GIL over sooner.
SWITCH_INTERVAL_S = 0.0005


class Server:
    def __init__(self, engine: Engine, host: str = "127.0.0.1", port: int = 0, *, api_key: str | None = None,
                 max_body_bytes: int = 1 << 20, limits: Limits = Limits(), log_level: str = "warning",
                 own_engine: bool = True):
        self.engine, self.own_engine = engine, own_engine  # own_engine: stop() closes the engine's lanes
        self.app = create_app(engine, api_key=api_key, max_body_bytes=max_body_bytes, limits=limits)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level=log_level, access_log=False, timeout_graceful_shutdown=5)
        self.uvicorn = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def serve_forever(self, warm_up: bool = True) -> None:
        """Listen (``/health``: starting), warm the engine up (``/health``: ready), serve until stopped."""
        if warm_up and not self.engine.ready:
            threading.Thread(target=self.engine.warm_up, name="vidqa-warmup", daemon=True).start()
        try:
            self.uvicorn.run(sockets=[self.sock])
        finally:
            self.engine.close()

    def start(self, warm_up: bool = True) -> "Server":
        """Warm up (blocking), then serve on a daemon thread until ``stop()``; returns once listening."""
        if warm_up and not self.engine.ready:
            self.engine.warm_up()
        self._thread = threading.Thread(target=self.uvicorn.run, kwargs={"sockets": [self.sock]},
                                        name="vidqa-server", daemon=True)
        self._thread.start()
        started = threading.Event()
        while not started.wait(0.01):  # uvicorn sets .started once it accepts connections
            if self.uvicorn.started or not self._thread.is_alive():
                started.set()
        return self

    def stop(self) -> None:
        self.uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.own_engine:
            self.engine.close()
        self.sock.close()

    def __enter__(self) -> "Server":
        return self.start() if self._thread is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
