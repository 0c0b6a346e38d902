"""Fault injection for the ledger tests: a store that goes down on demand, and a private redis-server that a test
starts, kills and restarts (with or without persistence)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clear_integrations.errors import LedgerUnavailable


class Flaky:
    """A store proxy that raises LedgerUnavailable while ``down`` (and counts the calls that reach it).

    ``cause`` is what the refusal carries (a string, or an exception such as redis-py's BusyLoadingError);
    ``gate``, when set, is called with the method name before every call (to hold a call at a given point)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.url = inner.url
        self.down = False
        self.cause: Any = "connection refused (test)"
        self.calls = 0
        self.gate: Callable[[str], None] | None = None

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.inner, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            if name != "close":
                self.calls += 1
                if self.gate is not None:
                    self.gate(name)
                if self.down:
                    raise LedgerUnavailable(self.url, self.cause)
            return method(*args, **kwargs)

        return call


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A private redis-server in a temp dir, killable and restartable on its port.

    ``persistence``: ``"always"`` or ``"everysec"`` (AOF with that fsync policy), or ``"none"`` (no AOF, no RDB:
    a restart starts empty)."""

    def __init__(self, folder: Path, persistence: str = "always") -> None:
        self.folder, self.port, self.persistence = folder, free_port(), persistence
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
        command += ["--save", ""]
        if self.persistence == "none":
            command += ["--appendonly", "no"]
        else:
            command += ["--appendonly", "yes", "--appendfsync", self.persistence]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()


def redis_server_for(tmp_path: Path, persistence: str = "always") -> Iterator[RedisServer]:
    """Start a private server (skip without redis-server, fail in CI), stop it afterwards."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is required in CI")
        pytest.skip("redis-server is not installed")
    pytest.importorskip("redis")
    server = RedisServer(tmp_path, persistence)
    server.start()
    yield server
    server.stop()
