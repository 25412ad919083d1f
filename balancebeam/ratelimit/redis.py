"""
Rate limiting shared by a fleet of balancers through Redis.

Every decision is one atomic Lua script run with C{EVALSHA} (C{EVAL} when the
server does not know the script, after a restart for example). The script
reads the time from the Redis server (C{TIME}), so the balancers' own clocks do
not matter, and applies the same fixed or sliding window arithmetic as
L{balancebeam.ratelimit.MemoryRateLimiter}.

The script and the key layout are in L{balancebeam.ratelimit.redis_script}.

Redis is never allowed to hold traffic up: L{RedisRateLimiter.check} always
answers within its timeout. When Redis is unreachable, answers with an error
or is too slow, the C{on_error} policy (C{"allow"} or C{"deny"}) decides, the
event is counted in L{RedisRateLimiter.errors} and logged, at most once per
C{error_log_interval} seconds.

Constructing a limiter does no I/O and schedules nothing: the connection is
made by L{RedisRateLimiter.start}, called from C{startService}, after twistd
has daemonized and dropped privileges. txredisapi is kept for the protocol and
its commands only; the connection is driven by our own L{ClientService}
(reconnection with backoff), and every timer, txredisapi's reply timeouts
included, runs on the injected reactor, never on the global one.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable
from typing import Any

from twisted.application.internet import ClientService
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from balancebeam.interfaces import IRateLimiter, RateLimitDecision
from balancebeam.ratelimit.memory import validate_parameters
from balancebeam.ratelimit.redis_script import SCRIPT

__all__ = [
    "FAIL_CLOSED_RETRY_AFTER",
    "ON_ERROR_POLICIES",
    "RECONNECT_JITTER",
    "SCRIPT",
    "RedisRateLimiter",
]

ON_ERROR_POLICIES = ("allow", "deny")
"""
The names accepted by C{--rate-limit-on-error}.
"""

FAIL_CLOSED_RETRY_AFTER = 1.0
"""
The C{retry_after} of requests denied because Redis could not be asked: the
state of the client is unknown, so ask it to come back soon.
"""

RECONNECT_JITTER = 0.12
"""
Each reconnection delay is multiplied by a random factor in
C{[1 - RECONNECT_JITTER, 1 + RECONNECT_JITTER]}, so that a fleet of balancers
does not reconnect to a restarted Redis in lockstep.
"""


class _RedisConnectionFactory(Factory):
    """
    Builds txredisapi protocols whose timers run on the injected clock.

    txredisapi's C{LineReceiver} takes C{callLater} from the global reactor,
    as a class attribute, for its reply timeouts and for resuming after a
    bulk reply; each protocol built here gets the injected clock's
    C{callLater} as an instance attribute instead. The protocols neither
    authenticate nor select a database in C{connectionMade} (they get no
    password and no database number): L{RedisRateLimiter} selects its
    database itself once told about the connection, so that a refusal is
    handled by our code and not by txredisapi's pool factory, which this is not.
    """

    noisy = False

    def __init__(
        self,
        protocol_class: Callable[..., Any],
        clock: IReactorTime,
        reply_timeout: float,
        connection_made: Callable[[Any], object],
    ) -> None:
        """
        @param protocol_class: C{txredisapi.RedisProtocol}.
        @param clock: runs the protocols' timers.
        @param reply_timeout: seconds after which an unanswered command makes
            the protocol drop its connection.
        @param connection_made: called with each protocol once its connection
            is up, before any command is sent on it.
        """
        self._protocol_class = protocol_class
        self._clock = clock
        self._reply_timeout = reply_timeout
        self._connection_made = connection_made

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        """
        A txredisapi protocol whose timers run on our clock.
        """
        protocol = self._protocol_class(replyTimeout=self._reply_timeout)
        # Shadows LineReceiver.callLater, the global reactor's.
        protocol.callLater = self._clock.callLater
        protocol.factory = self
        protocol.whenConnected().addCallback(self._connection_made)
        built: Protocol = protocol
        return built


@implementer(IRateLimiter)
class RedisRateLimiter:
    """
    Rate limits keys with counters kept in Redis, shared by every balancer
    that uses the same server, database and key prefix.

    Nothing happens on the network until L{start}; until a connection is
    up, L{check} answers by the C{on_error} policy.

    @ivar errors: how many decisions were taken by the C{on_error} policy
        because Redis was unreachable, failed or did not answer in time.
    @ivar _service: the L{ClientService} that keeps the connection up, once started.
    @ivar _protocol: the usable connection (its database selected), or C{None}.
    @ivar _unusable: connections made in a row that did not become usable;
        it keeps the reconnection delay growing when Redis accepts
        connections but refuses them (L{ClientService} forgets its failed
        attempts as soon as a transport is up).
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        host: str,
        port: int,
        db: int,
        limit: int,
        window: float,
        algorithm: str,
        timeout: float = 0.05,
        on_error: str = "allow",
        key_prefix: str = "balancebeam:rl:",
        *,
        reply_timeout: float | None = None,
        connect_timeout: float = 1.0,
        reconnect_initial_delay: float = 0.5,
        reconnect_max_delay: float = 5.0,
        error_log_interval: float = 10.0,
        time_source: Callable[[], float] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """
        Prepare a limiter; nothing is connected or scheduled until L{start}.
        L{check} can be called at once (it follows C{on_error} until connected).

        @param reactor: schedules every timer (our decision timeouts,
            txredisapi's reply timeouts, reconnections) and, as it must also
            provide L{IReactorTCP<twisted.internet.interfaces.IReactorTCP>}
            and a name resolver, makes the connection (L{HostnameEndpoint}).
        @param timeout: seconds a decision may wait for Redis.
        @param on_error: C{"allow"} or C{"deny"}: the decision when Redis is
            unreachable, fails or is slower than C{timeout}.
        @param key_prefix: prepended to each key to name its Redis hash.
        @param reply_timeout: seconds after which an unanswered command makes
            the limiter drop the connection and reconnect; by default the
            larger of 1 s and twice C{timeout}. Decisions never wait for it:
            they time out after C{timeout}, but a hung server is only given
            up (and reconnected to) after this.
        @param connect_timeout: seconds allowed for one connection attempt.
        @param reconnect_initial_delay: seconds before the first reconnection
            attempt; each further attempt waits e times longer...
        @param reconnect_max_delay: ...up to this many seconds (each delay is
            then spread by L{RECONNECT_JITTER}).
        @param error_log_interval: seconds between two log lines about errors.
        @param time_source: for tests only: take the time from this function
            instead of from the Redis server's C{TIME}.
        @param rng: the random source of the reconnection jitter.
        @raise ValueError: on bad parameters.
        """
        validate_parameters(limit, window, algorithm)
        if on_error not in ON_ERROR_POLICIES:
            raise ValueError(
                f"rate limit error policy {on_error!r} is not one of "
                f"{', '.join(ON_ERROR_POLICIES)}"
            )
        if not timeout > 0:
            raise ValueError(f"Redis timeout {timeout!r} must be greater than 0")
        self._reactor: IReactorTime = reactor
        self._host = host
        self._port = port
        self._db = db
        self._limit = limit
        self._window = float(window)
        self._timeout = timeout
        self._on_error = on_error
        self._prefix = key_prefix
        self._time_source = time_source
        self._script = SCRIPT.encode("utf-8")
        self._sha = hashlib.sha1(self._script).hexdigest()
        self._arguments = [repr(self._window), str(limit), algorithm]
        self._address = f"{host}:{port}/{db}"
        self._reply_timeout = max(1.0, 2 * timeout) if reply_timeout is None else reply_timeout
        self._connect_timeout = connect_timeout
        self._initial_delay = reconnect_initial_delay
        self._max_delay = reconnect_max_delay
        self._random = random.Random() if rng is None else rng
        self._closed = False
        self._service: ClientService | None = None
        self._protocol: Any = None
        self._unusable = 0
        self._waiting: list[Deferred[None]] = []
        self.errors = 0
        self._failing = False
        self._unreported = 0
        self._last_report: float | None = None
        self._last_select_report: float | None = None
        self._error_log_interval = error_log_interval

    def start(self) -> None:
        """
        Connect to Redis, on the injected reactor, and keep a connection up:
        reconnect with backoff whenever it is lost or cannot be made.

        Call it from C{startService}. Once started or closed, it does nothing.
        """
        if self._closed or self._service is not None:
            return
        # Imported here, not at module level: importing txredisapi installs
        # the global reactor, which must not happen just because the command
        # line was parsed or the memory backend was chosen.
        import txredisapi

        factory = _RedisConnectionFactory(
            txredisapi.RedisProtocol, self._reactor, self._reply_timeout, self._connection_made
        )
        endpoint = HostnameEndpoint(
            self._reactor, self._host, self._port, timeout=self._connect_timeout
        )
        # No prepareConnection for SELECT: ClientService (Twisted 26.10) leaves
        # a connection it rejected open, and its later loss raises NoTransition
        # in the state machine. The database is selected by _connection_made.
        self._service = ClientService(
            endpoint, factory, retryPolicy=self._retry_delay, clock=self._reactor
        )
        self._service.startService()

    def _retry_delay(self, attempt: int) -> float:
        """
        Seconds to wait before reconnecting after C{attempt} failures in a
        row: the initial delay, e times longer after each failure, up to the
        maximum, spread by L{RECONNECT_JITTER}.
        """
        attempt = max(attempt, self._unusable)
        delay = min(self._initial_delay * math.e ** min(100, attempt - 1), self._max_delay)
        return delay * (1 + RECONNECT_JITTER * (2 * self._random.random() - 1))

    def _connection_made(self, protocol: Any) -> None:
        """
        A connection is up: select the database before using it.
        """
        self._unusable += 1
        protocol.whenDisconnected().addCallback(self._connection_lost)
        selecting: Deferred[Any] = protocol.select(self._db)
        selecting.addCallbacks(
            self._selected,
            self._select_failed,
            callbackArgs=(protocol,),
            errbackArgs=(protocol,),
        )

    def _selected(self, reply: object, protocol: Any) -> None:
        """
        The connection is usable: load the script and let decisions use it.
        """
        if self._closed or not protocol.connected:
            return
        self._unusable = 0
        # Sent ahead of any EVALSHA on this connection; NOSCRIPT is handled anyway.
        loading: Deferred[Any] = protocol.script_load(self._script)
        loading.addErrback(self._script_load_failed)
        self._protocol = protocol
        self.log.info("connected to Redis at {redis}", redis=self._address)
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(None)

    def _select_failed(self, failure: Failure, protocol: Any) -> None:
        """
        Redis refused C{SELECT}: drop the connection (it is retried with
        backoff) and say why, at most once per C{error_log_interval}. A lost
        or timed out connection is already being dealt with.
        """
        from txredisapi import ConnectionError

        if self._closed or failure.check(ConnectionError):
            return
        now = self._reactor.seconds()
        last = self._last_select_report
        if last is None or now - last >= self._error_log_interval:
            self._last_select_report = now
            self.log.warn(
                "Redis at {redis} refused to select database {db} ({reason}); reconnecting",
                redis=self._address,
                db=self._db,
                reason=failure.getErrorMessage(),
            )
        protocol.transport.loseConnection()

    def _connection_lost(self, protocol: Any) -> None:
        """
        Stop using a connection that is gone; L{ClientService} reconnects.
        """
        if self._protocol is not protocol:
            return
        self._protocol = None
        if not self._closed:
            self.log.warn("lost the connection to Redis at {redis}", redis=self._address)

    @property
    def connected(self) -> bool:
        """
        Whether a connection to Redis is up (and its database selected) now.
        """
        return self._protocol is not None

    def when_connected(self) -> Deferred[None]:
        """
        Wait for a connection to Redis (for startup and tests).

        @return: fires once a connection is usable (L{connected} is then
            true); it may never fire if Redis stays unreachable, so add a
            timeout. It fails with L{CancelledError} once the limiter is
            closed. Cancelling it is safe.
        """
        if self._protocol is not None:
            return succeed(None)
        if self._closed:
            return fail(CancelledError())
        waiting: Deferred[None] = Deferred(self._waiting.remove)
        self._waiting.append(waiting)
        return waiting

    def check(self, key: str) -> Deferred[RateLimitDecision]:
        """
        Count one request for C{key} in Redis if it is allowed, and say whether it is.

        @return: a L{Deferred} that fires within C{timeout} seconds and never
            errbacks (unless cancelled: it then fails with L{CancelledError},
            which is not counted as an error); when Redis cannot decide, the
            C{on_error} policy does. Without a connection it fires at once.
        """
        protocol = self._protocol
        if protocol is None or self._closed:
            return succeed(self._fallback("not connected to Redis"))
        keys = [self._prefix + key]
        arguments = self._arguments + [
            "" if self._time_source is None else repr(self._time_source())
        ]
        decided: Deferred[RateLimitDecision] = Deferred()
        decided.addTimeout(self._timeout, self._reactor)
        decided.addCallbacks(self._succeeded, self._failed)
        reply: Deferred[Any]
        try:
            reply = protocol.evalsha(self._sha, keys, arguments)
        except Exception:
            reply = fail()
        reply.addErrback(self._run_script, protocol, keys, arguments)
        reply.addCallback(self._decision)
        reply.addBoth(self._deliver, decided)
        return decided

    def _run_script(
        self, failure: Failure, protocol: Any, keys: list[str], arguments: list[str]
    ) -> Any:
        """
        Fall back to C{EVAL}, which also caches the script, when Redis has
        forgotten it (C{NOSCRIPT}); pass other failures on.
        """
        from txredisapi import ScriptDoesNotExist

        failure.trap(ScriptDoesNotExist)
        return protocol.eval(self._script, keys, arguments)

    def _decision(self, reply: list[int]) -> RateLimitDecision:
        """
        Turn the script's reply into a decision.

        @raise ValueError: when the reply is not four integers.
        """
        if not (isinstance(reply, list) and len(reply) == 4):
            raise ValueError(f"unexpected reply from the rate limiting script: {reply!r}")
        allowed, remaining, reset_us, retry_us = (int(value) for value in reply)
        return RateLimitDecision(
            allowed=bool(allowed),
            limit=self._limit,
            remaining=remaining,
            reset_after=reset_us / 1e6,
            retry_after=retry_us / 1e6,
        )

    @staticmethod
    def _deliver(
        result: RateLimitDecision | Failure, decided: Deferred[RateLimitDecision]
    ) -> None:
        """
        Hand Redis' answer to the caller's L{Deferred}, unless the timeout
        already fired it; a late answer or failure is dropped.
        """
        if decided.called:
            return
        if isinstance(result, Failure):
            decided.errback(result)
        else:
            decided.callback(result)

    def _succeeded(self, decision: RateLimitDecision) -> RateLimitDecision:
        """
        Note that Redis answers again after errors.
        """
        if self._failing:
            self._failing = False
            self.log.info(
                "Redis rate limiting at {redis} works again "
                "({count} error(s) since the last report)",
                redis=self._address,
                count=self._unreported,
            )
            self._unreported = 0
        return decision

    def _failed(self, failure: Failure) -> RateLimitDecision | Failure:
        """
        Apply the C{on_error} policy to a request Redis could not decide;
        pass a cancellation by the caller on.
        """
        if failure.check(CancelledError):
            return failure
        if failure.check(TimeoutError):
            reason = f"no answer within {self._timeout} s"
        else:
            reason = failure.getErrorMessage() or failure.type.__name__
        return self._fallback(reason)

    def _fallback(self, reason: str) -> RateLimitDecision:
        """
        Count and report an error, and decide by the C{on_error} policy.
        """
        self.errors += 1
        self._unreported += 1
        self._failing = True
        now = self._reactor.seconds()
        if self._last_report is None or now - self._last_report >= self._error_log_interval:
            self.log.warn(
                "Redis rate limiting at {redis} failed {count} time(s) since the last "
                "report ({reason}); requests are handled by the {policy!r} policy",
                redis=self._address,
                count=self._unreported,
                reason=reason,
                policy=self._on_error,
            )
            self._unreported = 0
            self._last_report = now
        if self._on_error == "allow":
            return RateLimitDecision(True, self._limit, self._limit - 1, self._window, 0.0)
        return RateLimitDecision(False, self._limit, 0, self._window, FAIL_CLOSED_RETRY_AFTER)

    def _script_load_failed(self, failure: Failure) -> None:
        """
        Log a failed C{SCRIPT LOAD}; decisions fall back to C{EVAL} anyway. A
        lost connection is not worth a line of its own.
        """
        from txredisapi import ConnectionError

        if not self._closed and not failure.check(ConnectionError):
            self.log.warn(
                "could not load the rate limiting script into Redis at {redis}: {reason}",
                redis=self._address,
                reason=failure.getErrorMessage(),
            )

    def close(self) -> Deferred[None]:
        """
        Stop reconnecting and close the connection to Redis; L{when_connected}
        waiters fail with L{CancelledError}. Later checks follow the policy.

        @return: fires once the connection is closed and no attempt is left.
        """
        self._closed = True
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.errback(CancelledError())
        service, self._service = self._service, None
        if service is None:
            return succeed(None)
        return service.stopService()
