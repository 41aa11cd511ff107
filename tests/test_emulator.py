"""The emulator itself: its control API, its command line, and the matching rules that the
adapter tests do not already pin down."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from posguard.streams.emulators.bybit import running_emulator
from posguard.streams.emulators.bybit.orders import VenueReject, create_order
from posguard.streams.emulators.engine.matching import Engine
from posguard.supervisor.redis_server import free_port
from tests.emulator_fixtures import loopback_network_only  # noqa: F401

pytestmark = pytest.mark.usefixtures("loopback_network_only")

ROOT = Path(__file__).resolve().parent.parent


def order(link: str, side: str = "Buy", qty: str = "0.01", **extra: object) -> dict[str, object]:
    return {"category": "linear", "symbol": "BTCUSDT", "side": side, "orderType": "Market", "qty": qty,
            "orderLinkId": link, **extra}


@pytest.mark.asyncio_backend
async def test_control_api_moves_prices_sets_faults_and_tells_the_truth() -> None:
    async with running_emulator() as emu, aiohttp.ClientSession(base_url=emu.rest_url) as http:
        create_order(emu.engine, order("ctl-e", stopLoss="59000"))

        async def post(path: str, body: dict[str, object]) -> dict[str, object]:
            async with http.post(path, json=body) as response:
                assert response.status == 200, await response.text()
                return await response.json()

        faults = await post("/_control/faults", {"position_list_lag": 8.0, "push_drop": {"order": 0.5}})
        assert faults["position_list_lag"] == 8.0 and emu.faults.push_drop == {"order": 0.5}
        async with http.post("/_control/faults", json={"no_such_knob": 1}) as bad:
            assert bad.status == 400
        await post("/_control/price", {"symbol": "BTCUSDT", "price": 58_900})
        await post("/_control/balance", {"balance": 123.0})
        assert (await post("/_control/disconnect", {}))["dropped"] == 0
        async with http.get("/_control/truth") as response:
            truth = await response.json()
        assert truth["positions"] == {} and truth["balance"] == 123.0
        assert [o["create_type"] for o in truth["orders"]] == ["CreateByUser", "CreateByStopLoss"]
        assert truth["prices"]["BTCUSDT"] == 58_900


@pytest.mark.parametrize(("command", "time_path", "answered"), [
    (["-m", "posguard.streams.emulators.bybit"], "/v5/market/time", "retCode"),
    (["-m", "posguard", "emulator"], "/v5/market/time", "retCode"),
    (["-m", "posguard", "emulator", "--venue", "binance"], "/fapi/v1/time", "serverTime"),
    (["-m", "posguard.streams.emulators.binance"], "/fapi/v1/time", "serverTime"),
])
def test_runs_on_its_own_from_the_command_line(command: list[str], time_path: str, answered: str) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, *command, "--port", str(port)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()  # printed once the socket is listening
        assert f"http://127.0.0.1:{port}" in banner, banner
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{time_path}", timeout=5) as response:
            assert answered in json.load(response)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_control/truth", timeout=5) as response:
            assert json.load(response)["requests"] == {f"GET {time_path}": 1}
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_one_way_mode_an_opposite_order_reduces_then_flips() -> None:
    engine = Engine()
    create_order(engine, order("flip-1", qty="0.01", stopLoss="59000"))
    create_order(engine, order("flip-2", side="Sell", qty="0.03", stopLoss="61000"))
    position = engine.truth()["positions"]["BTCUSDT"]
    assert (position["side"], position["size"], position["stop_loss"]) == ("Sell", 0.02, 61_000.0)
    assert [e["qty"] for e in engine.truth()["executions"]] == [0.01, 0.03]


def test_a_reduce_only_stop_with_nothing_left_to_reduce_is_deactivated_when_it_triggers() -> None:
    engine = Engine()
    create_order(engine, order("ro-e"))
    create_order(engine, order("ro-s1", side="Sell", triggerPrice="59000", triggerDirection=2, reduceOnly=True))
    create_order(engine, order("ro-c0", side="Sell", reduceOnly=True))
    engine.set_price("BTCUSDT", 58_000)
    statuses = {o["order_link_id"]: o["status"] for o in engine.truth()["orders"]}
    assert statuses == {"ro-e": "Filled", "ro-s1": "Deactivated", "ro-c0": "Filled"}
    assert engine.truth()["positions"] == {}


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (order("bad-1", qty="0.0015"), 10001),  # not a multiple of the step
        (order("bad-2", qty="0.0001"), 10001),  # below the minimum
        (order("bad-3", side="Sell", reduceOnly=True), 110017),
        (order("bad-4", triggerPrice="61000", triggerDirection=2), 110093),
        (order("bad-5", triggerPrice="59000", triggerDirection=1), 110092),
        (order("bad-6", stopLoss="60500"), 10001),
        (order("x" * 37), 10001),
        ({**order("bad-7"), "category": "spot"}, 10001),
    ],
)
def test_requests_bybit_refuses(body: dict[str, object], code: int) -> None:
    engine = Engine()
    with pytest.raises(VenueReject) as refused:
        create_order(engine, body)
    assert refused.value.code == code
    assert engine.truth()["orders"] == []


def test_an_order_link_id_is_used_once() -> None:
    engine = Engine()
    create_order(engine, order("once"))
    with pytest.raises(VenueReject) as again:
        create_order(engine, order("once"))
    assert again.value.code == 110072
    assert len(engine.truth()["orders"]) == 1
