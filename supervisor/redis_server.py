"""Start a private redis-server for the demo and the tests.

posguard never borrows a Redis it was not told about: with no URL configured it runs its own
on a free loopback port, in a temporary directory, persisting nothing, and stops it at exit.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

__all__ = [
    "INSTALL_HINT",
    "PrivateRedisServer",
    "RedisServerMissing",
    "free_port",
    "restart_redis_server",
    "start_redis_server",
]

INSTALL_HINT = (
    "redis-server was not found on PATH. Install it (Debian/Ubuntu: "
    "'sudo apt-get install redis-server'; macOS: 'brew install redis') "
    "or set redis.url in config.toml to a Redis you run yourself."
)


class RedisServerMissing(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedisServer:
    """A running redis-server child process; a context manager that stops it on exit."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, workdir: Path) -> None:
        self.process = process
        self.port = port
        self.workdir = workdir

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def halt(self) -> None:
        """Stop the server but keep its directory (and any append-only file) for a restart."""
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> PrivateRedisServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_redis_server(port: int | None = None, *, appendonly: bool = False,
                       extra_args: Sequence[str] = ()) -> PrivateRedisServer:
    """Start redis-server on 127.0.0.1 and wait until it accepts connections.

    ``appendonly`` keeps data across a restart on the same ``port`` and directory (used by
    the Redis-restart test); by default nothing is persisted. ``extra_args`` are more
    redis-server options (the test cluster's ``--cluster-enabled yes``).
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisServerMissing(INSTALL_HINT)
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="posguard-redis-"))
    return _spawn(binary, port, workdir, appendonly, extra_args)


def restart_redis_server(server: PrivateRedisServer, *, appendonly: bool = True) -> PrivateRedisServer:
    """Start a new redis-server on the same port and directory as a stopped one."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisServerMissing(INSTALL_HINT)
    return _spawn(binary, server.port, server.workdir, appendonly)


def _spawn(binary: str, port: int, workdir: Path, appendonly: bool, extra_args: Sequence[str] = ()) -> PrivateRedisServer:
    args = [
        binary,
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(workdir),
        "--save", "",
        "--appendonly", "yes" if appendonly else "no",
        "--appendfsync", "always",
        "--protected-mode", "yes",
        "--loglevel", "warning",
        "--logfile", str(workdir / "redis.log"),
        *extra_args,
    ]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    server = PrivateRedisServer(process, port, workdir)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            err = process.stderr.read().decode(errors="replace") if process.stderr else ""
            log = (workdir / "redis.log").read_text(errors="replace") if (workdir / "redis.log").exists() else ""
            raise RuntimeError(f"redis-server exited at start (port {port}): {err or log}".strip())
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                if sock.recv(16).startswith((b"+PONG", b"-NOAUTH")):  # up (NOAUTH: it wants a password)
                    return server
        except OSError:
            pass
        time.sleep(0.02)
    server.stop()
    raise RuntimeError(f"redis-server did not answer PING on port {port} within 10 s")
