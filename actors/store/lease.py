"""One owner per account: the lease, its fencing token, and the one fenced write path.

The design is Kleppmann's ("How to do distributed locking", 2016: a lock service hands out a
monotonically increasing *fencing token* with each grant, and the storage refuses a write that
carries an older token), not Redlock: a lease alone cannot stop a process that was paused (GC,
SIGSTOP, a frozen VM) past its ttl from writing when it wakes; the token check in Redis can.

Keys (all in the account's hash tag, so one Redis Cluster slot; `Keys` names them):

* ``posguard:{acct}:lease`` (string, JSON, expires after ``lease.ttl``): who holds the lease:
  ``{"owner": "host-pid-nonce", "host": ..., "pid": ..., "since_ms": ..., "token": "N"}``;
* ``posguard:{acct}:epoch`` (string, integer): the latest fencing token handed out. Acquiring
  is one script: ``SET lease NX PX ttl`` and, when set, ``INCR epoch``. If the epoch key is
  missing (Redis lost its data) it starts again from Redis' clock in microseconds, so a token
  handed out after a loss is larger than any handed out before it (microseconds since 1970
  outgrow any count of acquisitions, each of which takes longer than one; in milliseconds, a
  loss within the millisecond of the first acquisition handed the same token out twice, as a
  test on a fast machine showed) and a process paused across the loss cannot match it. An
  epoch started in milliseconds by an older posguard stays below every one started since.

Every write of the running service (records, journal, intents and replies, alerts, audit
findings, the health hash's status, the venue event cache, intent acknowledgements) goes
through `FencedBatch`, executed by `fenced_write`: one Lua script that compares the epoch with
this process's token and, only if equal, runs the batch. Scripts are atomic, so nothing can
slip between the check and the write. A refusal raises `Fenced` and marks the `Fence` lost:
the service stops all venue action and exits with code 5 (README, "One owner per account").

Redis losing its data (FLUSHALL, a restart without persistence) deletes the epoch with the
lease. The script tells that apart from another token itself (``EPOCHLOST`` vs ``FENCED``), and
the holder then re-acquires through the normal acquire (`Lease.reacquire_after_loss`, the one
home of that decision): the lease key is ``SET NX``, so if a standby took the lease first, this
process is fenced as before; if it wins, the epoch restarts from Redis' clock, the token is new
and higher than any before (never reused), the write is retried once under it, and the
``on_data_lost`` listeners (the watchdog: pause entries, audit, adopt) are told.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any

import anyio
import coredis.exceptions
import msgspec
from coredis.tokens import PureToken

from posguard.actors.store.client import RedisClient
from posguard.actors.store.keys import Keys

__all__ = [
    "FENCE_CHECK", "Fence", "Fenced", "FencedBatch", "Lease", "LeaseHolder", "LeaseLost", "Standby", "fenced_write",
    "owner_id", "read_lease", "read_standbys", "run_fenced",
]

log = logging.getLogger("posguard.lease")


class Fenced(Exception):
    """Redis refused a write: the account's epoch is no longer this process's fencing token, so
    another process holds (or held) the lease since. Nothing of the refused batch was written.
    The process must stop all venue action and exit (code 5); the current leader carries on."""


class LeaseLost(Exception):
    """The lease could not be renewed before it expired (another process took it, or Redis did
    not answer for a whole ttl): stop all venue action and exit (code 5)."""


def owner_id() -> str:
    """This process's name as a lease owner and intents consumer: host, pid and a random nonce
    (a pid is reused after a restart, a nonce is not)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


class LeaseHolder(msgspec.Struct, frozen=True, kw_only=True):
    """The lease key's value, as ``redis-cli GET 'posguard:{acct}:lease'`` shows it."""

    owner: str
    host: str
    pid: int
    since_ms: int
    token: str = ""
    ttl_ms: int | None = None
    """Left of the lease when read (PTTL); not stored."""


class Fence:
    """This process's fencing token for one account, shared by every store object that writes.

    ``token`` empty means unfenced: the demo and tests that build a store without a lease; the
    writes still go through `fenced_write`, which then skips the check."""

    def __init__(self, account: str, token: str = "") -> None:
        self.keys = Keys(account)
        self.token = token
        self.lost = anyio.Event()
        self.why = ""
        self.reacquire: Callable[[], Awaitable[bool]] | None = None
        """Set by the `Lease` that owns this fence: take the lease again after Redis lost the
        epoch; True if won (then ``token`` is the new one). None (unfenced, tests): fenced."""
        self.on_data_lost: list[Callable[[str], None]] = []
        """Told (with the evidence) when this process re-acquired after the epoch was lost."""
        self._reacquiring = anyio.Lock()

    async def epoch_lost(self, stale: str) -> None:
        """A write or renew under token ``stale`` found the epoch key missing: Redis lost its
        data. Re-acquire once (concurrent writers wait on the lock and find the token already
        renewed); refuse (`Fenced`) if another process holds the lease now."""
        async with self._reacquiring:
            if self.is_lost:
                raise Fenced(self.why)
            if self.token != stale:
                return  # another write already re-acquired
            if self.reacquire is None or not await self.reacquire():
                self.refuse("Redis lost its data and another process took the lease first")
                raise Fenced(self.why)
            evidence = f"the fencing epoch was gone; the lease was taken again with token {self.token}"
            for listener in self.on_data_lost:
                listener(evidence)

    def refuse(self, why: str) -> None:
        """Mark the fence lost (first reason kept): `LeasedVenue` refuses from now on and the
        service's lease task ends the process."""
        if not self.lost.is_set():
            self.why = why
            log.critical("fenced: %s; no further venue action, exiting", why)
            self.lost.set()

    @property
    def is_lost(self) -> bool:
        return self.lost.is_set()

    def batch(self, client: RedisClient) -> FencedBatch:
        return FencedBatch(client, self)


FENCE_CHECK = """
local epoch = redis.call('GET', KEYS[1])
if ARGV[1] ~= '' and epoch == false then
  return redis.error_reply('EPOCHLOST the epoch key is missing (Redis lost its data), our token ' .. ARGV[1])
end
if ARGV[1] ~= '' and epoch ~= ARGV[1] then
  return redis.error_reply('FENCED epoch is ' .. tostring(epoch) .. ', our token ' .. ARGV[1])
end
"""
"""The head of every fenced script: KEYS[1] is the epoch, ARGV[1] this process's token (empty:
unfenced). A script that starts with it may write only after it (`run_fenced`)."""

_FENCED_WRITE = FENCE_CHECK + """
local i = 2
while i <= #ARGV do
  local key, n = KEYS[tonumber(ARGV[i + 1])], tonumber(ARGV[i + 2])
  if ARGV[i] == '?ABSENT' and redis.call('EXISTS', key) == 1 then return 0 end
  if ARGV[i] == '?FIELDS' then
    for j = i + 3, i + 1 + n, 2 do
      if (redis.call('HGET', key, ARGV[j]) or '') ~= ARGV[j + 1] then return 0 end
    end
  end
  i = i + 3 + n
end
i = 2
while i <= #ARGV do
  local n = tonumber(ARGV[i + 2])
  if string.sub(ARGV[i], 1, 1) ~= '?' then
    local args = {ARGV[i], KEYS[tonumber(ARGV[i + 1])]}
    for j = i + 3, i + 2 + n do args[#args + 1] = ARGV[j] end
    redis.call(unpack(args))
  end
  i = i + 3 + n
end
return 1
"""


class FencedBatch:
    """Writes collected like a MULTI (the subset of pipeline calls the store uses), sent as one
    fenced script by `fenced_write` when the ``async with`` block ends without an error.

    Expectations (`expect_absent`, `expect_fields`) are checked in that script before any
    write: one unmet, nothing is written and ``written`` is False. That is how a write ahead
    decided from what this process last saw of Redis (no read on the path) stays as safe as
    one decided from a fresh read: Redis itself says whether what was seen still holds."""

    def __init__(self, client: RedisClient, fence: Fence) -> None:
        self.client = client
        self.fence = fence
        self.ops: list[tuple[str, str, list[str]]] = []
        self.written = False
        """The batch was sent and every expectation held (set when the block ends)."""

    def _op(self, command: str, key: str, args: Iterable[Any]) -> None:
        if not key.startswith(self.fence.keys.prefix + ":"):
            raise ValueError(f"{key} is not a key of account {self.fence.keys.account}: a fenced write covers only"
                             " the account's own hash-tag slot")
        self.ops.append((command, key, [str(a) for a in args]))

    def expect_absent(self, key: str) -> None:
        """Write nothing unless ``key`` does not exist."""
        self._op("?ABSENT", key, [])

    def expect_fields(self, key: str, fields: Mapping[str, str]) -> None:
        """Write nothing unless the hash at ``key`` holds these values (a missing field: '')."""
        self._op("?FIELDS", key, [x for k, v in fields.items() for x in (k, v)])

    def hset(self, key: str, mapping: Mapping[str, Any]) -> None:
        if mapping:
            self._op("HSET", key, [x for k, v in mapping.items() for x in (k, v)])

    def hdel(self, key: str, fields: Iterable[str]) -> None:
        fields = list(fields)
        if fields:
            self._op("HDEL", key, fields)

    def sadd(self, key: str, members: Iterable[str]) -> None:
        self._op("SADD", key, members)

    def rpush(self, key: str, values: Iterable[str]) -> None:
        self._op("RPUSH", key, values)

    def expire(self, key: str, seconds: int) -> None:
        self._op("EXPIRE", key, [seconds])

    def xadd(self, key: str, fields: Mapping[str, Any], *, maxlen: int | None = None) -> None:
        trim = ["MAXLEN", "~", maxlen] if maxlen is not None else []
        self._op("XADD", key, [*trim, "*", *(x for k, v in fields.items() for x in (k, v))])

    def xack(self, key: str, group: str, entry_ids: Iterable[str]) -> None:
        self._op("XACK", key, [group, *entry_ids])

    async def __aenter__(self) -> FencedBatch:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if kind is None and self.ops:
            self.written = await fenced_write(self.client, self.fence, self.ops)


async def fenced_write(client: RedisClient, fence: Fence, ops: list[tuple[str, str, list[str]]]) -> bool:
    """The one place that decides whether this process may still write: the epoch equals our
    token (checked in the same script that writes, so atomically), or the fence is unfenced.
    False: an expectation of the batch (`FencedBatch.expect_absent`) did not hold; nothing written.
    A refusal writes nothing, marks the fence lost and raises `Fenced`. An epoch that is
    missing (Redis lost its data) is re-acquired (`Fence.epoch_lost`) and the batch is sent
    once more under the new token; missing again at once, it is refused as well. A write sent
    under the old token that Redis ran only after this process re-acquired finds the new token
    (``FENCED``) and is sent again under it too: the token changed because *we* took it."""
    index = {fence.keys.epoch: 1}
    argv: list[str] = [""]
    for command, key, args in ops:
        number = index.setdefault(key, len(index) + 1)
        argv += [command, str(number), str(len(args)), *args]
    return await run_fenced(client, fence, _FENCED_WRITE, list(index), argv) == 1


async def run_fenced(client: RedisClient, fence: Fence, script: str, keys: list[str], argv: list[Any]) -> Any:
    """Run a script that starts with `FENCE_CHECK` (``keys[0]`` the epoch key, ``argv[0]``
    overwritten with this process's token): the refusal and re-acquire rules of `fenced_write`,
    for writers with a script of their own (the ingest cache's, `RedisEventCache`). Returns the
    script's answer."""
    retried = False
    while True:
        if fence.is_lost:
            raise Fenced(fence.why)
        token = argv[0] = fence.token
        try:
            return await client.eval(script, keys, argv)
        except coredis.exceptions.ResponseError as exc:
            refusal = next((r for r in ("EPOCHLOST", "FENCED") if r in str(exc)), "")
            if not refusal:
                raise
            if not retried and (refusal == "EPOCHLOST" or fence.token != token):
                retried = True
                if refusal == "EPOCHLOST":
                    await fence.epoch_lost(token)
                continue
            fence.refuse(f"Redis refused a write: {exc}")
            raise Fenced(fence.why) from None


_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
if redis.call('EXISTS', KEYS[2]) == 0 then
  local t = redis.call('TIME')
  redis.call('SET', KEYS[2], string.format('%d', tonumber(t[1]) * 1000000 + tonumber(t[2])))
end
local token = string.format('%d', redis.call('INCR', KEYS[2]))
local value = ARGV[1] .. token .. '"}'
redis.call('SET', KEYS[1], value, 'NX', 'PX', ARGV[2])
return value
"""
_RENEW = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if current == false and redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
if current == false and redis.call('EXISTS', KEYS[2]) == 0 then return 3 end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Lease:
    """One account's lease as held (or sought) by this process.

    ``expires_at`` is local (``time.monotonic``): the moment the lease runs out as far as this
    process can be sure, counted from *before* the last successful renew was sent, so it is
    never later than Redis' own expiry. `holds` with a margin is what a venue action asks."""

    def __init__(self, client: RedisClient, account: str, *, ttl: float, owner: str | None = None) -> None:
        self.client = client
        self.keys = Keys(account)
        self.ttl = ttl
        self.owner = owner or owner_id()
        self.value = ""
        self.fence = Fence(account)
        self.fence.reacquire = self.reacquire_after_loss
        self.expires_at = 0.0

    @property
    def _ttl_ms(self) -> int:
        return int(self.ttl * 1000)

    async def acquire(self) -> bool:
        """Take the lease if it is free; True if taken (then ``fence.token`` is the new token)."""
        host, pid = socket.gethostname(), os.getpid()
        head = json.dumps({"owner": self.owner, "host": host, "pid": pid, "since_ms": int(time.time() * 1000)})
        sent = time.monotonic()
        value = await self.client.eval(_ACQUIRE, [self.keys.lease, self.keys.epoch],
                                       [head[:-1] + ', "token": "', self._ttl_ms])
        if not value:
            return False
        self.value = str(value)
        # The same Fence object: every store built with it writes under the new token.
        self.fence.token = msgspec.json.decode(self.value, type=LeaseHolder).token
        self.expires_at = sent + self.ttl
        log.warning("lease of account %s taken by %s (fencing token %s)", self.keys.account, self.owner,
                    self.fence.token)
        return True

    async def renew(self) -> bool:
        """Extend the lease if it is still ours (compare-and-PEXPIRE); a lease that merely
        expired while nobody else took it (the epoch still ours) is taken back; lease and epoch
        both gone (Redis lost its data) is re-acquired (`Fence.epoch_lost`, which raises
        `Fenced` if a standby won it). False: lost."""
        sent = time.monotonic()
        token = self.fence.token
        kept = await self.client.eval(_RENEW, [self.keys.lease, self.keys.epoch],
                                      [self.value, self._ttl_ms, token])
        if kept == 3:
            await self.fence.epoch_lost(token)
            return True
        if kept:
            self.expires_at = sent + self.ttl
        elif self.fence.token != token and not self.fence.is_lost:
            return True  # a write re-acquired while this renew was in flight (that acquire set the expiry)
        return bool(kept)

    async def reacquire_after_loss(self) -> bool:
        """Redis lost the epoch (and so the lease): take the lease again through the normal
        atomic acquire (SET NX, a fresh epoch from Redis' clock: higher than any token before).
        False if another process holds it now. Installed as the fence's ``reacquire``."""
        old = self.fence.token
        if not await self.acquire():
            return False
        log.critical("Redis lost the lease and the epoch of account %s: taken again, fencing token %s -> %s",
                     self.keys.account, old, self.fence.token)
        return True

    async def take_from_dead_holder(self) -> bool:
        """Take the lease at once from a holder on this host whose process is gone (a restart
        after a crash or SIGKILL need not wait out the ttl): its value is deleted only if it is
        still exactly that holder's (compare-and-delete), then acquired with a new token, so
        anything the dead process had in flight is fenced. A holder on another host, or a pid
        that is alive (even if stopped: SIGSTOP), is waited for."""
        value = await self.client.get(self.keys.lease)
        if not value:
            return await self.acquire()
        holder = msgspec.json.decode(value, type=LeaseHolder)
        if holder.host != socket.gethostname() or not _process_gone(holder.pid) or holder.pid == os.getpid():
            return False
        log.warning("the lease of account %s is held by pid %d on this host, which is gone: taking it over",
                    self.keys.account, holder.pid)
        await self.client.eval(_RELEASE, [self.keys.lease], [value])
        return await self.acquire()

    async def release(self) -> None:
        """Give the lease up (compare-and-delete): a standby takes over at once, not after a ttl."""
        if self.value:
            await self.client.eval(_RELEASE, [self.keys.lease], [self.value])

    def holds(self, margin: float) -> bool:
        """Whether the lease is surely ours for ``margin`` more seconds (and not fenced)."""
        return not self.fence.is_lost and time.monotonic() < self.expires_at - margin

    async def keep(self, *, renew_every: float) -> None:
        """Renew every ``renew_every`` seconds on its own task (audits and busy work never
        delay it). Raises `LeaseLost` when another process holds the lease or none could be
        renewed before it ran out, and `Fenced` when a write was refused meanwhile."""
        while True:
            with anyio.move_on_after(renew_every):
                await self.fence.lost.wait()
            if self.fence.is_lost:
                raise Fenced(self.fence.why)
            try:
                with anyio.fail_after(max(0.1, self.expires_at - time.monotonic())):
                    if not await self.renew():
                        self.fence.refuse("the lease is held by another process now")
                        raise LeaseLost(self.fence.why)
            except TimeoutError:
                self.fence.refuse(f"the lease could not be renewed within its ttl ({self.ttl:g} s)")
                raise LeaseLost(self.fence.why) from None
            except (coredis.exceptions.RedisError, OSError) as exc:
                if time.monotonic() >= self.expires_at:
                    self.fence.refuse(f"the lease ran out while Redis did not answer ({exc})")
                    raise LeaseLost(self.fence.why) from None
                log.warning("renewing the lease failed (%s); retrying, %.1f s left", exc,
                            self.expires_at - time.monotonic())


def _process_gone(pid: int) -> bool:
    """Whether no live process has this pid (a zombie, killed and not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


class Standby:
    """A process waiting for the lease: it writes its own presence (a member of the
    ``standbys`` sorted set, scored by when it expires) and nothing else."""

    def __init__(self, client: RedisClient, account: str, owner: str) -> None:
        self.client = client
        self.keys = Keys(account)
        self.member = json.dumps({"owner": owner, "host": socket.gethostname(), "pid": os.getpid(),
                                  "since_ms": int(time.time() * 1000)})

    async def announce(self, ttl: float) -> None:
        await self.client.zadd(self.keys.standbys, {self.member: int((time.time() + ttl) * 1000)})

    async def withdraw(self) -> None:
        await self.client.zrem(self.keys.standbys, [self.member])


async def read_lease(client: RedisClient, account: str) -> LeaseHolder | None:
    """Who holds the account's lease now, with what is left of it; None when nobody does."""
    keys = Keys(account)
    value = await client.get(keys.lease)
    if not value:
        return None
    holder = msgspec.json.decode(value, type=LeaseHolder)
    return msgspec.structs.replace(holder, ttl_ms=await client.pttl(keys.lease))


async def read_standbys(client: RedisClient, account: str) -> list[LeaseHolder]:
    """Standbys whose presence has not expired."""
    now_ms = int(time.time() * 1000)
    members = await client.zrange(Keys(account).standbys, now_ms, "+inf", sortby=PureToken.BYSCORE)
    return [msgspec.json.decode(m, type=LeaseHolder) for m in members]
