"""One actor per symbol, each under a one-for-one restart loop (I4, DESIGN.md section 6).

An actor is created on first use (an intent, a live record at start-up, an audit finding) and
lives for the rest of the process. When it fails it is restarted on its own, after the restart
backoff, and reconciles its symbol before it takes new work; too many restarts in a window
escalate to safe mode (see `posguard.supervisor.supervision`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping

import anyio
from anyio.abc import TaskGroup

from posguard.actors.context import ActorContext
from posguard.actors.lifecycle import SymbolActor
from posguard.actors.lifecycle.recovery import AsRead
from posguard.actors.store.client import is_redis_failure
from posguard.supervisor.metrics import Metrics
from posguard.supervisor.supervision import EntryGate, RestartTracker, SupervisorSettings
from posguard.supervisor.watchdog import pause_for_redis, publish_health

__all__ = ["ActorFactory", "ActorRegistry"]

log = logging.getLogger("posguard.engine")

ActorFactory = Callable[[ActorContext, str], SymbolActor]
"""Makes the actor for a symbol; the registry starts and supervises it. A seam for
instrumentation (benchmarks stamp their actors through it)."""


class ActorRegistry(Mapping[str, SymbolActor]):
    """The running actors by symbol, read like a dict; `get_or_start` is the only way in."""

    def __init__(
        self,
        *,
        ctx: ActorContext,
        settings: SupervisorSettings,
        gate: EntryGate,
        metrics: Metrics,
        request_audit: Callable[[str], None],
        factory: ActorFactory = SymbolActor,
    ) -> None:
        self.ctx = ctx
        self.settings = settings
        self.gate = gate
        self.metrics = metrics
        self.request_audit = request_audit
        self.factory = factory
        self.restarts = RestartTracker(settings)
        self._actors: dict[str, SymbolActor] = {}
        self._task_group: TaskGroup | None = None

    # -- the mapping ------------------------------------------------------------------------

    def __getitem__(self, symbol: str) -> SymbolActor:
        return self._actors[symbol]

    def __iter__(self) -> Iterator[str]:
        return iter(self._actors)

    def __len__(self) -> int:
        return len(self._actors)

    def __contains__(self, symbol: object) -> bool:
        return symbol in self._actors

    def get(self, symbol: str, default: SymbolActor | None = None) -> SymbolActor | None:  # type: ignore[override]
        """As `dict.get` (and as fast: the router asks for every event that may end a position)."""
        return self._actors.get(symbol, default)

    # -- starting and supervising -------------------------------------------------------------

    def attach(self, task_group: TaskGroup) -> None:
        """The task group the actors run in; `Engine.run` attaches its own before any actor."""
        self._task_group = task_group

    def get_or_start(self, symbol: str, as_read: AsRead | None = None) -> SymbolActor:
        """The symbol's actor, created and started under supervision on first use.
        ``as_read``: its record as the start-up read it, for a new actor's first resume."""
        actor = self._actors.get(symbol)
        if actor is None:
            assert self._task_group is not None, "Engine.run() must be started first"
            actor = self._actors[symbol] = self.factory(self.ctx, symbol)
            actor.as_read = as_read
            self._task_group.start_soon(self._supervise, actor, name=f"actor {symbol}")
        return actor

    def is_busy(self, symbol: str) -> bool:
        actor = self._actors.get(symbol)
        return actor is not None and actor.busy

    def busy_symbols(self) -> list[str]:
        return [s for s, a in self._actors.items() if a.busy]

    async def _supervise(self, actor: SymbolActor) -> None:
        """One-for-one restarts with backoff; escalate to safe mode past the intensity limit.

        The backoff starts over once an actor has run for a whole restart window: a crash
        weeks after the last one is a new incident, not the next step of an old one."""
        delays = self.settings.restart_backoff.delays(self.ctx.rng)
        reconcile_first = False
        while True:
            started = anyio.current_time()
            try:
                await actor.run(reconcile_first=reconcile_first)
                return
            except Exception as exc:
                if anyio.current_time() - started >= self.settings.restart_window:
                    delays = self.settings.restart_backoff.delays(self.ctx.rng)
                actor.busy = False
                redis = is_redis_failure(exc)
                log.error("actor %s failed (%s: %s); restarting", actor.symbol, type(exc).__name__, exc,
                          exc_info=not redis)
                self.metrics.on_restart()
                if redis:
                    pause_for_redis(self.gate)
                else:
                    if self.restarts.record():
                        await self._enter_safe_mode(
                            f"{self.settings.max_restarts}+ actor restarts within "
                            f"{self.settings.restart_window:.0f} s (last: {actor.symbol}: {exc})"
                        )
                    # The restarted actor checks its own symbol first; the whole account is
                    # audited too, in case the failure left traces beyond it. (After a Redis
                    # failure the audit runs when Redis answers again.)
                    self.request_audit(f"actor {actor.symbol} failed")
                reconcile_first = True
                await anyio.sleep(next(delays))

    async def _enter_safe_mode(self, reason: str) -> None:
        if self.gate.enter_safe_mode(reason):
            await publish_health(self.ctx.store, self.gate)
            await self.ctx.alert("*", f"safe mode: {reason}")
