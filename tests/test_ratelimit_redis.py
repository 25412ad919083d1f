"""
Tests for L{balancebeam.ratelimit.redis}.

L{RedisPolicyTests} and L{MemoryConnectionTests} run on a
L{MemoryReactorClock} with no Redis at all (the latter play the server's part
of the conversation by hand). The other classes start a real C{redis-server}
for each test (see L{tests.redis_server}) and run on the real reactor.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import reactor as _global_reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from balancebeam.interfaces import IRateLimiter, RateLimitDecision
from balancebeam.ratelimit.build import build_rate_limiter
from balancebeam.ratelimit.memory import MemoryRateLimiter
from balancebeam.ratelimit.redis import SCRIPT, RedisRateLimiter
from tests.redis_server import RedisServer

reactor: IReactorTime = _global_reactor


class RedisPolicyTests(SynchronousTestCase):
    """
    Tests for what L{RedisRateLimiter} does when it cannot reach Redis, on a
    memory reactor where the connection attempt never completes.
    """

    def setUp(self) -> None:
        """
        A memory reactor and a log observer.
        """
        self.reactor = MemoryReactorClock()
        self.events = EventLoggingObserver()
        globalLogPublisher.addObserver(self.events)
        self.addCleanup(globalLogPublisher.removeObserver, self.events)

    def limiter(self, on_error: str = "allow", start: bool = True) -> RedisRateLimiter:
        """
        A limiter of 5 requests per 60 s aimed at 127.0.0.1:6390, started
        unless C{start} is false, and closed at cleanup.
        """
        limiter = RedisRateLimiter(
            self.reactor, "127.0.0.1", 6390, 2, 5, 60, "sliding", on_error=on_error
        )
        self.addCleanup(lambda: self.successResultOf(limiter.close()))
        if start:
            limiter.start()
        return limiter

    def warnings(self) -> list[int]:
        """
        The C{count} field of each warning about failed decisions logged so far.
        """
        return [
            event["count"]
            for event in self.events
            if event["log_level"] == LogLevel.warn and "count" in event
        ]

    def test_provides_interface(self) -> None:
        """
        L{RedisRateLimiter} provides L{IRateLimiter}.
        """
        self.assertTrue(verifyObject(IRateLimiter, self.limiter()))

    def test_construction_does_no_io(self) -> None:
        """
        Constructing a limiter makes no connection attempt and schedules
        nothing, on the given reactor or on the global one.
        """
        before = set(reactor.getDelayedCalls())
        limiter = self.limiter(start=False)
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(set(reactor.getDelayedCalls()), before)
        self.assertFalse(limiter.connected)

    def test_start_connects_to_address(self) -> None:
        """
        C{start} makes the connection attempt, to the given host and port
        with the connect timeout, on the given reactor; a second C{start}
        does nothing.
        """
        limiter = self.limiter(start=False)
        limiter.start()
        limiter.start()
        self.assertEqual(
            [(host, port, timeout) for host, port, _, timeout, _ in self.reactor.tcpClients],
            [("127.0.0.1", 6390, 1.0)],
        )
        self.assertFalse(limiter.connected)

    def test_fail_open_without_connection(self) -> None:
        """
        Without a connection, the C{allow} policy answers at once with a full
        quota, and the error is counted.
        """
        limiter = self.limiter("allow")
        self.assertEqual(
            self.successResultOf(limiter.check("a")),
            RateLimitDecision(
                allowed=True, limit=5, remaining=4, reset_after=60.0, retry_after=0.0
            ),
        )
        self.assertEqual(limiter.errors, 1)

    def test_fail_closed_without_connection(self) -> None:
        """
        Without a connection, the C{deny} policy denies at once and asks the
        client to come back in a second.
        """
        limiter = self.limiter("deny")
        self.assertEqual(
            self.successResultOf(limiter.check("a")),
            RateLimitDecision(
                allowed=False, limit=5, remaining=0, reset_after=60.0, retry_after=1.0
            ),
        )
        self.assertEqual(limiter.errors, 1)

    def test_errors_logged_at_most_every_interval(self) -> None:
        """
        Errors are logged once, then at most once per 10 s with the number of
        errors since the last line.
        """
        limiter = self.limiter()
        for _ in range(100):
            limiter.check("a")
        self.assertEqual(self.warnings(), [1])
        self.reactor.advance(9.9)
        limiter.check("a")
        self.assertEqual(self.warnings(), [1])
        self.reactor.advance(0.1)
        limiter.check("a")
        self.assertEqual(self.warnings(), [1, 101])
        self.assertEqual(limiter.errors, 102)
        self.assertEqual(self.events[0]["reason"], "not connected to Redis")

    def test_closed(self) -> None:
        """
        C{close} fires once the connection attempt is abandoned, leaving no
        timer behind; later checks follow the policy.
        """
        limiter = RedisRateLimiter(self.reactor, "127.0.0.1", 6390, 0, 5, 60, "fixed")
        limiter.start()
        self.successResultOf(limiter.close())
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertTrue(self.successResultOf(limiter.check("a")).allowed)

    def test_closed_before_start(self) -> None:
        """
        A limiter closed before it was started fires C{close} at once and
        never connects, even if C{start} is called afterwards.
        """
        limiter = RedisRateLimiter(self.reactor, "127.0.0.1", 6390, 0, 5, 60, "fixed")
        self.successResultOf(limiter.close())
        limiter.start()
        self.assertEqual(self.reactor.tcpClients, [])
        self.failureResultOf(limiter.when_connected(), CancelledError)

    def test_when_connected_fails_on_close(self) -> None:
        """
        A pending C{when_connected} fails with L{CancelledError} when the
        limiter is closed; a cancelled one is simply forgotten.
        """
        limiter = self.limiter()
        waiting = limiter.when_connected()
        cancelled = limiter.when_connected()
        cancelled.cancel()
        self.failureResultOf(cancelled, CancelledError)
        self.assertNoResult(waiting)
        self.successResultOf(limiter.close())
        self.failureResultOf(waiting, CancelledError)

    def test_bad_parameters(self) -> None:
        """
        Unknown policies and algorithms, non-positive timeouts and limits are refused.
        """
        for arguments in (
            dict(on_error="maybe"),
            dict(timeout=0.0),
            dict(algorithm="leaky"),
            dict(limit=0),
        ):
            parameters: dict[str, object] = dict(
                reactor=self.reactor,
                host="127.0.0.1",
                port=6390,
                db=0,
                limit=5,
                window=60.0,
                algorithm="fixed",
            )
            parameters.update(arguments)
            self.assertRaises(ValueError, RedisRateLimiter, **parameters)
        self.assertEqual(self.reactor.tcpClients, [])


def parse_commands(data: bytes) -> list[list[bytes]]:
    """
    Split what a Redis client wrote into its commands (RESP arrays of bulk
    strings), checking the framing strictly.
    """
    commands = []
    while data:
        line, data = data.split(b"\r\n", 1)
        if not line.startswith(b"*"):
            raise AssertionError(f"not a command: {line!r}")
        words = []
        for _ in range(int(line[1:])):
            header, data = data.split(b"\r\n", 1)
            if not header.startswith(b"$"):
                raise AssertionError(f"not a bulk string: {header!r}")
            length = int(header[1:])
            if data[length : length + 2] != b"\r\n":
                raise AssertionError(f"bad bulk string framing: {data[: length + 2]!r}")
            words.append(data[:length])
            data = data[length + 2 :]
        commands.append(words)
    return commands


SHA = hashlib.sha1(SCRIPT.encode("utf-8")).hexdigest().encode()


class FakeRedisConnection:
    """
    The server end of one connection the limiter made on a memory reactor.

    @ivar protocol: the client protocol, as the reactor sees it.
    @ivar transport: what the client wrote.
    """

    def __init__(self, reactor: MemoryReactorClock, index: int) -> None:
        """
        Complete the connection attempt number C{index} of C{reactor}.
        """
        host, port, factory, _, _ = reactor.tcpClients[index]
        address = IPv4Address("TCP", host, port)
        protocol = factory.buildProtocol(address)
        assert protocol is not None
        self.protocol = protocol
        self.transport = StringTransport(peerAddress=address)
        protocol.makeConnection(self.transport)

    def commands(self) -> list[list[bytes]]:
        """
        The commands written since the last call.
        """
        data = self.transport.value()
        self.transport.clear()
        return parse_commands(data)

    def reply(self, data: bytes) -> None:
        """
        Send C{data} (raw RESP) to the client.
        """
        self.protocol.dataReceived(data)

    def lose(self) -> None:
        """
        Tell the client that the connection is gone.
        """
        self.protocol.connectionLost(Failure(ConnectionDone()))


class FixedRandom:
    """
    A stand-in for L{random.Random} whose C{random()} is always the same.
    """

    def __init__(self, value: float) -> None:
        """
        @param value: what C{random()} returns.
        """
        self.value = value

    def random(self) -> float:
        """
        The fixed value.
        """
        return self.value


class MemoryConnectionTests(SynchronousTestCase):
    """
    Tests for L{RedisRateLimiter}'s connection and commands on a
    L{MemoryReactorClock}, with the server's part played by the test: every
    timer must run on that reactor, none on the global one.
    """

    def setUp(self) -> None:
        """
        A memory reactor, a log observer, and a check at cleanup that nothing
        was scheduled on the global reactor.
        """
        self.reactor = MemoryReactorClock()
        self.events = EventLoggingObserver()
        globalLogPublisher.addObserver(self.events)
        self.addCleanup(globalLogPublisher.removeObserver, self.events)
        before = set(reactor.getDelayedCalls())
        self.addCleanup(lambda: self.assertEqual(set(reactor.getDelayedCalls()) - before, set()))

    def limiter(self, **arguments: Any) -> RedisRateLimiter:
        """
        A started limiter of 5 requests per 60 s in database 2 of
        127.0.0.1:6390 with jitter-free reconnection delays.
        """
        parameters: dict[str, Any] = dict(on_error="allow", rng=FixedRandom(0.5))
        parameters.update(arguments)
        limiter = RedisRateLimiter(
            self.reactor, "127.0.0.1", 6390, 2, 5, 60, "sliding", **parameters
        )
        limiter.start()
        return limiter

    def connect(self, limiter: RedisRateLimiter, index: int = 0) -> FakeRedisConnection:
        """
        Complete the connection attempt number C{index} and answer C{SELECT}.
        """
        connection = FakeRedisConnection(self.reactor, index)
        self.assertEqual(connection.commands(), [[b"SELECT", b"2"]])
        self.assertFalse(limiter.connected)
        connection.reply(b"+OK\r\n")
        self.assertEqual(connection.commands(), [[b"SCRIPT", b"LOAD", SCRIPT.encode()]])
        connection.reply(b"$40\r\n" + SHA + b"\r\n")
        self.assertTrue(limiter.connected)
        return connection

    def close(self, limiter: RedisRateLimiter, connection: FakeRedisConnection) -> None:
        """
        Close C{limiter} and check that it closed C{connection} and left no timer.
        """
        closing = limiter.close()
        self.assertTrue(connection.transport.disconnecting)
        self.assertNoResult(closing)
        connection.lose()
        self.successResultOf(closing)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def retry_delays(self) -> list[float]:
        """
        The delays of the timers now pending on the memory reactor.
        """
        now = self.reactor.seconds()
        calls: Sequence[IDelayedCall] = self.reactor.getDelayedCalls()
        return [call.getTime() - now for call in calls]

    def test_select_then_script_load(self) -> None:
        """
        A new connection selects the database and loads the script; the
        limiter counts as connected once C{SELECT} is answered, and
        C{when_connected} fires then.
        """
        limiter = self.limiter()
        waiting = limiter.when_connected()
        connection = FakeRedisConnection(self.reactor, 0)
        self.assertEqual(connection.commands(), [[b"SELECT", b"2"]])
        self.assertNoResult(waiting)
        connection.reply(b"+OK\r\n")
        self.assertTrue(limiter.connected)
        self.successResultOf(waiting)
        self.successResultOf(limiter.when_connected())
        self.assertEqual(connection.commands(), [[b"SCRIPT", b"LOAD", SCRIPT.encode()]])
        self.close(limiter, connection)

    def test_decision_with_evalsha(self) -> None:
        """
        A check runs the script with C{EVALSHA}, the key under the prefix and
        the window, limit, algorithm and an empty time, and turns the reply
        into a decision.
        """
        limiter = self.limiter()
        connection = self.connect(limiter)
        decided = limiter.check("192.0.2.1")
        self.assertEqual(
            connection.commands(),
            [
                [
                    b"EVALSHA", SHA, b"1", b"balancebeam:rl:192.0.2.1",
                    b"60.0", b"5", b"sliding", b"",
                ]
            ],
        )  # fmt: skip
        self.assertNoResult(decided)
        connection.reply(b"*4\r\n:0\r\n:0\r\n:12500000\r\n:3250000\r\n")
        self.assertEqual(
            self.successResultOf(decided),
            RateLimitDecision(
                allowed=False, limit=5, remaining=0, reset_after=12.5, retry_after=3.25
            ),
        )
        self.assertEqual(limiter.errors, 0)
        self.close(limiter, connection)

    def test_noscript_falls_back_to_eval(self) -> None:
        """
        When Redis answers C{NOSCRIPT}, the same check is sent again with
        C{EVAL} and the whole script, and its answer is the decision.
        """
        limiter = self.limiter()
        connection = self.connect(limiter)
        decided = limiter.check("a")
        self.assertEqual(connection.commands()[0][0], b"EVALSHA")
        connection.reply(b"-NOSCRIPT No matching script. Please use EVAL.\r\n")
        self.assertEqual(
            connection.commands(),
            [
                [
                    b"EVAL", SCRIPT.encode(), b"1", b"balancebeam:rl:a",
                    b"60.0", b"5", b"sliding", b"",
                ]
            ],
        )  # fmt: skip
        connection.reply(b"*4\r\n:1\r\n:4\r\n:60000000\r\n:0\r\n")
        self.assertEqual(self.successResultOf(decided), RateLimitDecision(True, 5, 4, 60.0, 0.0))
        self.assertEqual(limiter.errors, 0)
        self.close(limiter, connection)

    def test_error_reply_follows_policy(self) -> None:
        """
        An error reply other than C{NOSCRIPT} makes the policy decide, and
        is counted and logged with Redis' message.
        """
        limiter = self.limiter(on_error="deny")
        connection = self.connect(limiter)
        decided = limiter.check("a")
        connection.commands()
        connection.reply(b"-OOM command not allowed when used memory > 'maxmemory'.\r\n")
        self.assertEqual(self.successResultOf(decided), RateLimitDecision(False, 5, 0, 60.0, 1.0))
        self.assertEqual(limiter.errors, 1)
        [warning] = [event for event in self.events if event.get("count") == 1]
        self.assertIn("OOM", warning["reason"])
        self.close(limiter, connection)

    def test_decision_timeout_on_memory_clock(self) -> None:
        """
        A decision Redis does not answer within C{timeout} is taken by the
        policy when the memory clock reaches the timeout; the late reply is
        dropped.
        """
        limiter = self.limiter(timeout=0.05)
        connection = self.connect(limiter)
        decided = limiter.check("a")
        self.reactor.advance(0.049)
        self.assertNoResult(decided)
        self.reactor.advance(0.001)
        self.assertEqual(self.successResultOf(decided), RateLimitDecision(True, 5, 4, 60.0, 0.0))
        self.assertEqual(limiter.errors, 1)
        connection.reply(b"*4\r\n:0\r\n:0\r\n:1000000\r\n:1000000\r\n")
        self.assertEqual(limiter.errors, 1)
        self.assertTrue(limiter.connected)
        self.close(limiter, connection)

    def test_reply_timeout_on_memory_clock(self) -> None:
        """
        txredisapi's reply timeout runs on the memory clock: an unanswered
        command aborts the connection after C{reply_timeout}, not before, and
        the limiter reconnects after the initial delay.
        """
        limiter = self.limiter(timeout=0.05, reply_timeout=2.0)
        connection = self.connect(limiter)
        limiter.check("a")
        self.reactor.advance(1.999)
        self.assertFalse(connection.transport.disconnecting)
        self.reactor.advance(0.001)
        self.assertTrue(connection.transport.disconnecting)
        connection.lose()
        self.assertFalse(limiter.connected)
        self.assertEqual([round(delay, 6) for delay in self.retry_delays()], [0.5])
        self.reactor.advance(0.5)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.close(limiter, self.connect(limiter, 1))

    def test_default_reply_timeout(self) -> None:
        """
        By default, an unanswered command is given up after the larger of
        1 s and twice the decision timeout.
        """
        for timeout, expected in ((0.05, 1.0), (0.75, 1.5)):
            limiter = self.limiter(timeout=timeout)
            connection = FakeRedisConnection(self.reactor, len(self.reactor.tcpClients) - 1)
            self.reactor.advance(expected - 0.001)
            self.assertFalse(connection.transport.disconnecting)
            self.reactor.advance(0.001)
            self.assertTrue(connection.transport.disconnecting)
            connection.lose()
            self.successResultOf(limiter.close())
            self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_lost_connection_fails_pending_decision(self) -> None:
        """
        A decision waiting for Redis when the connection drops is taken by
        the policy at once, and the loss is logged.
        """
        limiter = self.limiter(on_error="deny")
        connection = self.connect(limiter)
        decided = limiter.check("a")
        connection.lose()
        self.assertEqual(self.successResultOf(decided), RateLimitDecision(False, 5, 0, 60.0, 1.0))
        self.assertEqual(limiter.errors, 1)
        self.assertFalse(limiter.connected)
        self.assertEqual(
            [event["redis"] for event in self.events if "lost" in event["log_format"]],
            ["127.0.0.1:6390/2"],
        )
        self.successResultOf(limiter.close())

    def test_reconnect_backoff(self) -> None:
        """
        Failed attempts are retried after 0.5 s, then e times longer each
        time up to 5 s; a usable connection starts again from 0.5 s.
        """
        limiter = self.limiter()
        delays = []
        for index in range(5):
            _, _, factory, _, _ = self.reactor.tcpClients[index]
            factory.clientConnectionFailed(
                self.reactor.connectors[index], Failure(ConnectionRefusedError())
            )
            # HostnameEndpoint gives up on its next attempt interval (0.3 s).
            self.reactor.advance(0.3)
            [delay] = self.retry_delays()
            delays.append(delay)
            self.reactor.advance(delay)
        self.assertEqual(
            [round(delay, 6) for delay in delays], [0.5, 1.359141, 3.694528, 5.0, 5.0]
        )
        connection = self.connect(limiter, 5)
        connection.lose()
        self.assertEqual([round(delay, 6) for delay in self.retry_delays()], [0.5])
        self.successResultOf(limiter.close())

    def test_reconnect_jitter(self) -> None:
        """
        The random source spreads each delay by up to 12% either way.
        """
        for value, expected in ((0.0, 0.44), (1.0, 0.56)):
            limiter = self.limiter(rng=FixedRandom(value))
            connection = self.connect(limiter, len(self.reactor.tcpClients) - 1)
            connection.lose()
            self.assertEqual([round(delay, 6) for delay in self.retry_delays()], [expected])
            self.successResultOf(limiter.close())

    def test_select_refused(self) -> None:
        """
        A connection whose C{SELECT} is refused is closed and never used;
        reconnections back off as if it had failed, and the refusal is
        logged at most once per interval.
        """
        limiter = self.limiter()
        delays = []
        for index in range(3):
            connection = FakeRedisConnection(self.reactor, index)
            self.assertEqual(connection.commands(), [[b"SELECT", b"2"]])
            connection.reply(b"-ERR DB index is out of range\r\n")
            self.assertTrue(connection.transport.disconnecting)
            self.assertFalse(limiter.connected)
            connection.lose()
            [delay] = self.retry_delays()
            delays.append(delay)
            self.reactor.advance(delay)
        self.assertEqual([round(delay, 6) for delay in delays], [0.5, 1.359141, 3.694528])
        refusals = [event for event in self.events if "refused" in event["log_format"]]
        self.assertEqual([event["reason"] for event in refusals], ["ERR DB index is out of range"])
        self.assertTrue(self.successResultOf(limiter.check("a")).allowed)
        self.assertEqual(limiter.errors, 1)
        self.successResultOf(limiter.close())

    def test_cancelled_check_is_not_an_error(self) -> None:
        """
        Cancelling a pending decision fails it with L{CancelledError}; it is
        not counted as a Redis error.
        """
        limiter = self.limiter()
        connection = self.connect(limiter)
        decided = limiter.check("a")
        decided.cancel()
        self.failureResultOf(decided, CancelledError)
        self.assertEqual(limiter.errors, 0)
        connection.reply(b"*4\r\n:1\r\n:4\r\n:60000000\r\n:0\r\n")
        self.assertEqual(limiter.errors, 0)
        self.close(limiter, connection)

    def test_close_while_connecting(self) -> None:
        """
        Closing during a connection attempt abandons it at once and leaves
        no timer; a connection completed later is never used.
        """
        limiter = self.limiter()
        pending: Deferred[None] = limiter.when_connected()
        self.successResultOf(limiter.close())
        self.failureResultOf(pending, CancelledError)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertFalse(limiter.connected)


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """
    Poll C{condition} on the real reactor until it holds.

    @raise AssertionError: when it does not hold within C{timeout} seconds.
    """
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"{condition} did not hold within {timeout} s")
        await deferLater(reactor, 0.01)


async def decide(limiter: RedisRateLimiter, key: str) -> RateLimitDecision:
    """
    Ask C{limiter} about C{key} and check that the answer never errbacks.
    """
    return await limiter.check(key)


class RedisTestCase(TestCase):
    """
    Base for tests against a real Redis, started for each test.
    """

    def setUp(self) -> None:
        """
        Start C{redis-server} on a free port.
        """
        self.server = RedisServer()
        self.addCleanup(self.server.cleanup)
        self.server.start()

    async def limiter(
        self,
        limit: int = 5,
        window: float = 60.0,
        algorithm: str = "sliding",
        on_error: str = "allow",
        clock: Clock | None = None,
        connect: bool = True,
        timeout: float = 1.0,
        db: int = 0,
    ) -> RedisRateLimiter:
        """
        A limiter on the test server, closed at cleanup, connected unless
        C{connect} is false.

        @param clock: when given, the script's time comes from it instead of
            from Redis' C{TIME}.
        @param timeout: the decision timeout; generous by default so that a
            loaded test machine does not turn answers into policy decisions.
        """
        limiter = RedisRateLimiter(
            reactor,
            "127.0.0.1",
            self.server.port,
            db,
            limit,
            window,
            algorithm,
            timeout=timeout,
            on_error=on_error,
            reconnect_initial_delay=0.05,
            reconnect_max_delay=0.2,
            time_source=None if clock is None else clock.seconds,
        )
        self.addCleanup(limiter.close)
        limiter.start()
        if connect:
            await limiter.when_connected().addTimeout(10, reactor)
        return limiter


class RedisLimitTests(RedisTestCase):
    """
    Tests for the decisions L{RedisRateLimiter} takes with Redis up.
    """

    async def test_server_time(self) -> None:
        """
        With Redis' own clock, exactly C{limit} requests pass, and the next
        one is told to wait a positive time of at most two windows.
        """
        limiter = await self.limiter(limit=5, window=3600)
        remaining = [(await decide(limiter, "a")).remaining for _ in range(5)]
        self.assertEqual(remaining, [4, 3, 2, 1, 0])
        denied = await decide(limiter, "a")
        self.assertFalse(denied.allowed)
        self.assertTrue(0 < denied.retry_after <= 7200, denied)
        self.assertTrue(0 < denied.reset_after <= 3600, denied)
        self.assertEqual(limiter.errors, 0)

    async def test_two_limiters_share_one_limit(self) -> None:
        """
        Two limiters (two balancers) on one Redis together allow C{limit}
        requests per client, not twice as many.
        """
        first = await self.limiter(limit=5, window=3600)
        second = await self.limiter(limit=5, window=3600)
        allowed = 0
        for _ in range(5):
            allowed += (await decide(first, "a")).allowed
            allowed += (await decide(second, "a")).allowed
        self.assertEqual(allowed, 5)
        self.assertTrue((await decide(second, "b")).allowed)
        self.assertEqual(first.errors + second.errors, 0)

    async def test_fixed_boundary(self) -> None:
        """
        With fixed windows in Redis, C{limit} requests on each side of a
        boundary all pass.
        """
        clock = Clock()
        limiter = await self.limiter(limit=3, algorithm="fixed", clock=clock)
        clock.advance(59.5)
        before = [(await decide(limiter, "a")).allowed for _ in range(4)]
        clock.advance(0.5)
        after = [(await decide(limiter, "a")).allowed for _ in range(4)]
        self.assertEqual(before, [True, True, True, False])
        self.assertEqual(after, [True, True, True, False])

    async def test_sliding_boundary(self) -> None:
        """
        With the sliding window in Redis, a burst before a boundary still
        counts after it, and C{retry_after} is solved exactly.
        """
        clock = Clock()
        limiter = await self.limiter(limit=10, algorithm="sliding", clock=clock)
        clock.advance(59)
        self.assertEqual(sum([(await decide(limiter, "a")).allowed for _ in range(12)]), 10)
        clock.advance(1)
        self.assertEqual(
            await decide(limiter, "a"),
            RateLimitDecision(
                allowed=False, limit=10, remaining=0, reset_after=60.0, retry_after=6.0
            ),
        )
        clock.advance(5.999)
        self.assertFalse((await decide(limiter, "a")).allowed)
        clock.advance(0.001)
        self.assertTrue((await decide(limiter, "a")).allowed)

    async def test_same_decisions_as_memory(self) -> None:
        """
        For the same requests at the same times, Redis and memory limiters
        take the same decisions, with both algorithms.
        """
        steps = [0.0] * 4 + [30.0] + [0.0] * 3 + [29.5] + [0.5] * 6 + [45.0] * 3 + [200.0]
        for algorithm in ("fixed", "sliding"):
            clock = Clock()
            clock.advance(600)
            memory = MemoryRateLimiter(clock, 4, 60, algorithm)
            redis = await self.limiter(limit=4, algorithm=algorithm, clock=clock)
            for step in steps:
                clock.advance(step)
                self.assertEqual(
                    await decide(redis, algorithm),
                    memory.check(algorithm),
                    f"{algorithm} at {clock.seconds()}",
                )

    async def test_key_layout(self) -> None:
        """
        Each client is one hash under the prefix with its window number and
        counts, expiring after two windows; denied requests do not write.
        """
        clock = Clock()
        clock.advance(125)
        limiter = await self.limiter(limit=2, window=60, clock=clock)
        for _ in range(3):
            await decide(limiter, "192.0.2.1")
        reply = self.server.command("HGETALL", "balancebeam:rl:192.0.2.1")
        fields = reply.split(b"\r\n")[2::2]
        self.assertEqual(len(fields), 6, reply)
        stored = dict(zip(fields[0::2], fields[1::2]))
        self.assertEqual(stored, {b"w": b"2", b"c": b"2", b"p": b"0"})
        ttl = int(self.server.command("PTTL", "balancebeam:rl:192.0.2.1")[1:].strip())
        self.assertTrue(110_000 < ttl <= 120_000, ttl)

    async def test_script_reloaded_after_flush(self) -> None:
        """
        When Redis forgets the script (C{NOSCRIPT}), the limiter runs it with
        C{EVAL} and keeps deciding.
        """
        limiter = await self.limiter(limit=3)
        self.assertEqual((await decide(limiter, "a")).remaining, 2)
        self.assertEqual(self.server.command("SCRIPT", "FLUSH"), b"+OK\r\n")
        self.assertEqual((await decide(limiter, "a")).remaining, 1)
        self.assertEqual((await decide(limiter, "a")).remaining, 0)
        self.assertEqual(limiter.errors, 0)

    async def test_factory_builds_redis_limiter(self) -> None:
        """
        L{build_rate_limiter} turns a C{redis://} backend into a
        L{RedisRateLimiter} that connects once started.
        """
        limiter = build_rate_limiter(reactor, self.server.url, 2, 60, "fixed", 1.0, "deny", 10)
        assert isinstance(limiter, RedisRateLimiter)
        self.addCleanup(limiter.close)
        self.assertFalse(limiter.connected)
        limiter.start()
        await limiter.when_connected().addTimeout(10, reactor)
        self.assertEqual((await decide(limiter, "a")).remaining, 1)


class RedisOutageTests(RedisTestCase):
    """
    Tests for L{RedisRateLimiter} when Redis goes away, hangs and comes back.
    """

    async def outage(self, on_error: str) -> tuple[RedisRateLimiter, list[RateLimitDecision]]:
        """
        Use up a limit of 2, kill Redis and ask again three times.
        """
        limiter = await self.limiter(limit=2, on_error=on_error)
        await decide(limiter, "a")
        await decide(limiter, "a")
        self.server.kill()
        await wait_for(lambda: not limiter.connected)
        started = reactor.seconds()
        decisions = [await decide(limiter, "a") for _ in range(3)]
        self.assertLess(reactor.seconds() - started, 0.05)
        return limiter, decisions

    async def test_down_allow(self) -> None:
        """
        With Redis down and C{on_error=allow}, requests are allowed at once
        and counted as errors.
        """
        limiter, decisions = await self.outage("allow")
        self.assertEqual([decision.allowed for decision in decisions], [True] * 3)
        self.assertEqual(limiter.errors, 3)

    async def test_down_deny(self) -> None:
        """
        With Redis down and C{on_error=deny}, requests are denied at once.
        """
        limiter, decisions = await self.outage("deny")
        self.assertEqual(
            decisions,
            [RateLimitDecision(False, 2, 0, 60.0, 1.0)] * 3,
        )
        self.assertEqual(limiter.errors, 3)

    async def test_request_in_flight_when_redis_dies(self) -> None:
        """
        A decision waiting for Redis when the connection drops follows the policy.
        """
        limiter = await self.limiter(limit=2, on_error="deny")
        self.server.pause()
        pending = limiter.check("a")
        self.server.kill()
        decision = await pending
        self.assertFalse(decision.allowed)
        self.assertEqual(limiter.errors, 1)

    async def _hang(self, on_error: str) -> None:
        """
        Freeze Redis and check that a decision comes within the timeout,
        from the policy, and that limiting goes on once Redis thaws.
        """
        limiter = await self.limiter(limit=3, on_error=on_error, timeout=0.2)
        self.assertEqual((await decide(limiter, "a")).remaining, 2)
        self.server.pause()
        started = reactor.seconds()
        decision = await decide(limiter, "a")
        elapsed = reactor.seconds() - started
        self.assertEqual(decision.allowed, on_error == "allow")
        self.assertTrue(0.19 <= elapsed < 1.0, elapsed)
        self.assertEqual(limiter.errors, 1)
        self.server.resume()
        # Redis ran the late request when it thawed: it counts.
        thawed = await decide(limiter, "a")
        self.assertEqual((thawed.allowed, thawed.remaining), (True, 0))
        self.assertEqual(limiter.errors, 1)

    async def test_slow_allow(self) -> None:
        """
        A frozen Redis makes the C{allow} policy answer after the timeout.
        """
        await self._hang("allow")

    async def test_slow_deny(self) -> None:
        """
        A frozen Redis makes the C{deny} policy answer after the timeout.
        """
        await self._hang("deny")

    async def test_reconnects_when_redis_returns(self) -> None:
        """
        After Redis restarts on the same port, the limiter reconnects by
        itself and limits again (the restarted Redis starts from empty counts),
        and logs that it recovered.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        limiter = await self.limiter(limit=2, on_error="deny")
        self.assertEqual((await decide(limiter, "a")).remaining, 1)
        self.server.kill()
        await wait_for(lambda: not limiter.connected)
        self.assertFalse((await decide(limiter, "a")).allowed)
        self.server.start()
        await wait_for(lambda: limiter.connected)
        results = [await decide(limiter, "a") for _ in range(3)]
        self.assertEqual([result.remaining for result in results], [1, 0, 0])
        self.assertEqual([result.allowed for result in results], [True, True, False])
        self.assertTrue(30 < results[2].retry_after <= 90, results[2])
        self.assertEqual(limiter.errors, 1)
        recovered = [event for event in events if "works again" in event["log_format"]]
        self.assertEqual(len(recovered), 1)

    async def test_database_refused(self) -> None:
        """
        A database the server does not have makes it refuse C{SELECT}: the
        limiter never uses the connection, says why once, keeps trying with
        backoff and follows its policy meanwhile.
        """
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        limiter = await self.limiter(limit=2, on_error="deny", connect=False, db=99)

        def refusals() -> list[str]:
            return [event["reason"] for event in events if "refused" in event["log_format"]]

        asked: list[None] = []

        def connections() -> int:
            # Connections received by the server, not counting the ones
            # made to ask it.
            asked.append(None)
            reply = self.server.command("INFO", "stats")
            [line] = [line for line in reply.split(b"\r\n") if b"connections_received:" in line]
            return int(line.split(b":")[1]) - len(asked)

        await wait_for(lambda: bool(refusals()))
        first = connections()
        await wait_for(lambda: connections() >= first + 3)
        self.assertEqual(len(refusals()), 1)
        self.assertIn("out of range", refusals()[0])
        self.assertFalse(limiter.connected)
        self.assertFalse((await decide(limiter, "a")).allowed)
        self.assertEqual(limiter.errors, 1)

    async def test_never_connected(self) -> None:
        """
        A limiter whose Redis is down from the start follows its policy and
        connects once Redis is up.
        """
        self.server.stop()
        limiter = await self.limiter(limit=2, on_error="deny", connect=False)
        self.assertFalse((await decide(limiter, "a")).allowed)
        self.server.start()
        await wait_for(lambda: limiter.connected)
        self.assertTrue((await decide(limiter, "a")).allowed)
