"""
Whole balancers sharing a rate limit through a real C{redis-server}.

The server is started by the tests on a free port (see L{tests.redis_server});
without C{redis-server} these tests skip, except in CI, where they fail.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred

from balancebeam.ratelimit.redis import RedisRateLimiter
from balancebeam.service import BalancerService
from tests.redis_server import RedisServer
from tests.test_integration import IntegrationTestCase, build_request, sleep


class SharedRedisLimitTests(IntegrationTestCase):
    """
    Two balancer services pointed at one Redis enforce one limit.
    """

    timeout = 30

    def setUp(self) -> None:
        self.redis = RedisServer()
        self.redis.start()
        self.addCleanup(self.redis.cleanup)
        self.limiters: list[RedisRateLimiter] = []

    async def _balancer(self, upstream: object, on_error: str = "allow") -> int:
        """
        Start a balancer with a limit of 5 per minute in the shared Redis.

        @return: its port.
        """
        service: BalancerService = self.start_balancer(
            [upstream],  # type: ignore[list-item]  # an UpstreamServer
            max_requests_per_minute=5,
            rate_limit_backend=self.redis.url,
            rate_limit_redis_timeout=1.0,
            rate_limit_on_error=on_error,
        )
        limiter = service.rate_limiter
        assert isinstance(limiter, RedisRateLimiter)
        self.limiters.append(limiter)
        waiting: Deferred[None] = limiter.when_connected()
        waiting.addTimeout(5, reactor)
        await waiting
        return self.port

    async def _statuses(self, ports: list[int], count: int) -> list[int]:
        """
        Send C{count} requests on fresh connections, alternating between C{ports}.
        """
        statuses = []
        for index in range(count):
            self.port = ports[index % len(ports)]
            response = await self.fetch(build_request(target=b"/shared%d" % index))
            statuses.append(response.status)
        return statuses

    async def test_two_balancers_one_limit(self) -> None:
        """
        Eight requests spread over two balancers sharing Redis get five 200s
        in all, not five each; the upstream sees exactly five.
        """
        upstream = self.start_upstream("shared")
        ports = [await self._balancer(upstream), await self._balancer(upstream)]
        statuses = await self._statuses(ports, 8)
        self.assertEqual(statuses, [200] * 5 + [429] * 3)
        self.assertEqual(len(upstream.client_requests), 5)

    async def test_redis_down_fails_open_then_recovers(self) -> None:
        """
        With --rate-limit-on-error allow, requests pass while Redis is down,
        and limiting resumes once it is back.
        """
        upstream = self.start_upstream("shared")
        port = await self._balancer(upstream, on_error="allow")
        self.assertEqual(await self._statuses([port], 6), [200] * 5 + [429])
        self.redis.kill()
        self.assertEqual(await self._statuses([port], 3), [200] * 3)
        self.redis.start()
        [limiter] = self.limiters
        for _ in range(100):
            if limiter.connected:
                break
            await sleep(0.05)
        self.assertTrue(limiter.connected)
        # The new server starts empty: five more pass, then the limit holds.
        self.assertEqual(await self._statuses([port], 6), [200] * 5 + [429])

    async def test_redis_down_fails_closed(self) -> None:
        """
        With --rate-limit-on-error deny, requests get 429 while Redis is down.
        """
        upstream = self.start_upstream("shared")
        port = await self._balancer(upstream, on_error="deny")
        self.assertEqual(await self._statuses([port], 1), [200])
        self.redis.kill()
        self.assertEqual(await self._statuses([port], 2), [429, 429])
        self.assertEqual(len(upstream.client_requests), 1)
