"""Test harness: async tests on trio with a mock clock, and a private redis-server.

* ``async def test_...`` runs on **trio** with `IOAwareMockClock` (timeouts cost no wall
  time), or on anyio's **asyncio** backend when marked ``@pytest.mark.asyncio_backend``
  (the ccxt adapter, which only runs on asyncio). The clock is available to the test as
  the ``clock`` fixture.
* ``redis_url`` is a redis-server this session starts on a free port in a temporary
  directory; it is flushed before every test that uses it. Never the machine's 6379.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator

import anyio
import pytest

from tests.clock import IOAwareMockClock


@pytest.fixture
def clock() -> IOAwareMockClock:
    return IOAwareMockClock()


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    func = pyfuncitem.obj
    if not inspect.iscoroutinefunction(func):
        return None
    argnames = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in argnames}
    call = functools.partial(func, **kwargs)
    if pyfuncitem.get_closest_marker("asyncio_backend"):
        anyio.run(call, backend="asyncio")
    else:
        clock = pyfuncitem.funcargs.get("clock") or IOAwareMockClock()
        anyio.run(call, backend="trio", backend_options={"clock": clock.trio_clock})
    return True


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Async tests need the clock fixture instantiated so the test and the runner share it.
    for item in items:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj):
            if "clock" not in item.fixturenames and not item.get_closest_marker("asyncio_backend"):
                item.fixturenames.append("clock")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    from posguard.supervisor.redis_server import RedisServerMissing, start_redis_server

    try:
        server = start_redis_server()
    except RedisServerMissing as exc:
        pytest.exit(f"tests need redis-server: {exc}", returncode=3)
    with server:
        yield server.url


@pytest.fixture
def redis_url(redis_server: str) -> str:
    import socket

    # Flush with a raw RESP command so this fixture does not depend on any event loop.
    host, port = redis_server.removeprefix("redis://").split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"*1\r\n$8\r\nFLUSHALL\r\n")
        reply = sock.recv(64)
    assert reply.startswith(b"+OK"), f"FLUSHALL failed: {reply!r}"
    return redis_server


@pytest.fixture(scope="session")
def redis_cluster_server() -> Iterator[object]:
    """A local three-master Redis Cluster (`tests.redis_cluster`), started once per session."""
    from posguard.supervisor.redis_server import RedisServerMissing
    from tests.redis_cluster import start_cluster

    try:
        cluster = start_cluster()
    except RedisServerMissing as exc:
        pytest.exit(f"tests need redis-server and redis-cli: {exc}", returncode=3)
    with cluster:
        yield cluster


@pytest.fixture
def redis_cluster(redis_cluster_server: object) -> object:
    """The session's cluster, every master flushed before the test."""
    redis_cluster_server.flush()  # type: ignore[attr-defined]
    return redis_cluster_server
