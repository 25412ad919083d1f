"""
Tests for L{balancebeam.ratelimit.redis}.

L{RedisPolicyTests} run on a L{MemoryReactorClock} with no Redis at all. The
other classes start a real C{redis-server} for each test (see
L{tests.redis_server}) and run on the real reactor.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import reactor as _global_reactor
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from balancebeam.interfaces import IRateLimiter, RateLimitDecision
from balancebeam.ratelimit.build import build_rate_limiter
from balancebeam.ratelimit.memory import MemoryRateLimiter
from balancebeam.ratelimit.redis import RedisRateLimiter
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

    def limiter(self, on_error: str = "allow") -> RedisRateLimiter:
        """
        A limiter of 5 requests per 60 s aimed at 127.0.0.1:6390, closed at cleanup.
        """
        limiter = RedisRateLimiter(
            self.reactor, "127.0.0.1", 6390, 2, 5, 60, "sliding", on_error=on_error
        )
        self.addCleanup(lambda: self.successResultOf(limiter.close()))
        return limiter

    def warnings(self) -> list[int]:
        """
        The C{count} field of each warning logged so far.
        """
        return [event["count"] for event in self.events if event["log_level"] == LogLevel.warn]

    def test_provides_interface(self) -> None:
        """
        L{RedisRateLimiter} provides L{IRateLimiter}.
        """
        self.assertTrue(verifyObject(IRateLimiter, self.limiter()))

    def test_connects_to_address(self) -> None:
        """
        The limiter connects to the given host and port with the given reactor.
        """
        limiter = self.limiter()
        self.assertEqual(
            [(host, port) for host, port, *_ in self.reactor.tcpClients], [("127.0.0.1", 6390)]
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
        C{close} fires once the connection attempt is abandoned; later checks
        follow the policy.
        """
        limiter = RedisRateLimiter(self.reactor, "127.0.0.1", 6390, 0, 5, 60, "fixed")
        self.successResultOf(limiter.close())
        self.assertTrue(self.successResultOf(limiter.check("a")).allowed)

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
            0,
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
        stored = dict(zip(fields[0::2], fields[1::2], strict=True))
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
        L{build_rate_limiter} turns a C{redis://} backend into a connected
        L{RedisRateLimiter}.
        """
        limiter = build_rate_limiter(
            reactor, self.server.url, 2, 60, "fixed", 1.0, "deny", 10
        )
        assert isinstance(limiter, RedisRateLimiter)
        self.addCleanup(limiter.close)
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

