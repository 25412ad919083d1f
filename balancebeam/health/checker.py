"""
Active health checks: a service that probes every upstream periodically and
writes the verdicts to the L{UpstreamRegistry}, with HAProxy-style rise/fall
hysteresis.

The checker only reads and writes the registry; the probe itself (see
L{balancebeam.probe.HTTPProbe}) is injected, as is the clock. Passive and
active checks share one state: the relay marks an upstream down on a failed
connect, and the probes of this checker bring it back.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from twisted.application.service import Service
from twisted.internet import error
from twisted.internet.defer import Deferred, TimeoutError, fail, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from balancebeam.health.probe import ProbeFailed
from balancebeam.registry import DISABLED, UpstreamRegistry, UpstreamState

Probe = Callable[[UpstreamState], Deferred[int]]


def describe_failure(failure: Failure, timeout: float) -> str:
    """
    A short, log-friendly description of why a probe failed.

    @param failure: how the probe's L{Deferred} failed.
    @param timeout: the probe timeout, quoted when the probe timed out.
    """
    if failure.check(TimeoutError):
        return f"timed out after {float(timeout)} s"
    if failure.check(error.ConnectionRefusedError):
        return "connection refused"
    if failure.check(error.TCPTimedOutError, error.TimeoutError):
        return "connect timed out"
    if failure.check(error.DNSLookupError):
        return "DNS lookup failed"
    if failure.check(error.NoRouteError):
        return "no route to host"
    if failure.check(error.ConnectError):
        return f"connect failed: {failure.value}"
    if failure.check(ProbeFailed):
        return str(failure.value)
    return f"{type(failure.value).__name__}: {failure.value}"


@dataclass(frozen=True)
class ProbeResult:
    """
    The outcome of one probe of one upstream.

    @ivar healthy: whether the probe counted as a success (status 200).
    @ivar reason: C{"status 200"}, C{"status 500"}, C{"timed out after 2.0 s"}, ...
    @ivar at: clock time at which the result arrived.
    """

    healthy: bool
    reason: str
    at: float


class _Streak:
    """
    Consecutive probe results of one upstream since its last state change.

    @ivar successes: consecutive healthy results.
    @ivar failures: consecutive unhealthy results.
    """

    __slots__ = ("successes", "failures")

    def __init__(self) -> None:
        self.successes = 0
        self.failures = 0


def _plural(count: int, word: str) -> str:
    """
    C{"1 consecutive success"}, C{"2 consecutive successes"} and the like.
    """
    suffix = "" if count == 1 else ("es" if word.endswith("s") else "s")
    return f"{count} consecutive {word}{suffix}"


class HealthChecker(Service):
    """
    Probes every upstream each C{interval} seconds and marks them up or down
    in the registry.

    A round probes all upstreams concurrently (except those disabled through
    the admin listener, which are in maintenance), each under C{timeout}; the
    next round is scheduled only once every probe of the round has finished,
    so rounds never overlap. The first round runs one interval after start.
    A probe is healthy only when it fires with status 200; a timeout, an
    error or an exception raised by the probe callable is a failure of that
    upstream alone and never stops the loop.

    Hysteresis works on the registry's current state, whoever set it:
    C{fall} consecutive failures mark a live upstream down, C{rise}
    consecutive successes mark a dead one up (also one that the relay marked
    down after a failed connect). Both counts restart on every state change
    and on an opposite result. The registry logs each change once at warn;
    single probes are logged at debug only.

    @ivar probes_sent: probes started since creation.
    @ivar probes_failed: probes that counted as failures (not counting
        those cancelled by L{stopService}).
    @ivar last_results: the latest L{ProbeResult} per upstream name.
    """

    log = Logger()

    def __init__(
        self,
        registry: UpstreamRegistry,
        clock: IReactorTime,
        probe: Probe,
        interval: float,
        timeout: float,
        rise: int = 2,
        fall: int = 2,
    ) -> None:
        """
        @param registry: the upstreams to probe and the state to update.
        @param clock: schedules rounds and probe timeouts.
        @param probe: starts one probe of one upstream; its L{Deferred} fires
            with the status code and is cancelled on timeout or stop.
        @param interval: seconds between rounds; must be positive (with
            active checks off, do not build a checker at all).
        @param timeout: seconds each probe may take; see
            L{balancebeam.config_values.default_health_check_timeout}.
        @param rise: consecutive successes that revive a dead upstream.
        @param fall: consecutive failures that take down a live upstream.
        @raise ValueError: when the arguments break these preconditions
            (L{balancebeam.config} validates the options they come from).
        """
        if not (0 < interval < math.inf and 0 < timeout < math.inf and rise >= 1 and fall >= 1):
            raise ValueError(
                f"HealthChecker needs a positive interval ({interval!r}) and timeout"
                f" ({timeout!r}) and a rise ({rise!r}) and fall ({fall!r}) of at least 1"
            )
        self._registry = registry
        self._clock = clock
        self._probe = probe
        self.interval = interval
        self.timeout = timeout
        self.rise = rise
        self.fall = fall
        self.probes_sent = 0
        self.probes_failed = 0
        self.last_results: dict[str, ProbeResult] = {}
        self._streaks: dict[str, _Streak] = {u.name: _Streak() for u in registry.upstreams}
        self._in_flight: set[Deferred[int]] = set()
        self._loop: LoopingCall | None = None
        self._loop_done: Deferred[None] | None = None
        self._stopping = False
        registry.add_observer(self._state_changed)

    def startService(self) -> None:
        """
        Start the loop; the first round runs one interval from now.
        """
        super().startService()
        self._stopping = False
        loop = LoopingCall(self.run_round)
        loop.clock = self._clock
        self._loop = loop
        self._loop_done = loop.start(self.interval, now=False).addCallbacks(
            lambda _: None, self._loop_failed
        )
        self.log.info(
            "active health checks every {interval} s, timeout {timeout} s,"
            " rise {rise}, fall {fall}",
            interval=self.interval,
            timeout=self.timeout,
            rise=self.rise,
            fall=self.fall,
        )

    def stopService(self) -> Deferred[None]:
        """
        Stop the loop and cancel the probes in flight.

        @return: a L{Deferred} that fires once the loop has stopped and
            every probe of the current round has finished.
        """
        super().stopService()
        self._stopping = True
        loop, self._loop = self._loop, None
        done, self._loop_done = self._loop_done, None
        if loop is None or done is None:
            return succeed(None)
        if loop.running:
            loop.stop()
        for probe in list(self._in_flight):
            probe.cancel()
        return done

    def run_round(self) -> Deferred[None]:
        """
        Probe every upstream once, concurrently.

        @return: a L{Deferred} that fires (never fails) when every probe of
            the round has finished and its result has been recorded.
        """
        checks = [
            self._check(upstream)
            for upstream in self._registry.upstreams
            if upstream.admin_state != DISABLED
        ]
        return gatherResults(checks).addCallback(lambda _: None)

    def _check(self, upstream: UpstreamState) -> Deferred[None]:
        """
        Probe one upstream under the timeout and record the result.
        """
        self.probes_sent += 1
        probe: Deferred[int]
        try:
            probe = self._probe(upstream)
        except Exception:
            failure = Failure()
            self.log.failure(
                "health probe of {upstream} raised", failure=failure, upstream=upstream.name
            )
            probe = fail(failure)
        else:
            probe.addTimeout(self.timeout, self._clock)
            self._in_flight.add(probe)
            probe.addBoth(self._settled, probe)
        recorded = probe.addCallbacks(
            self._record, self._record, callbackArgs=(upstream,), errbackArgs=(upstream,)
        )
        return recorded.addErrback(self._record_failed, upstream)

    def _settled(self, result: int | Failure, probe: Deferred[int]) -> int | Failure:
        """
        Forget a finished probe; pass its result on.
        """
        self._in_flight.discard(probe)
        return result

    def _record(self, result: int | Failure, upstream: UpstreamState) -> None:
        """
        Count one probe result and change the upstream's state when its
        streak reaches C{rise} or C{fall}. Results of probes cancelled by
        L{stopService} are dropped.
        """
        if self._stopping:
            return
        if isinstance(result, Failure):
            healthy = False
            reason = describe_failure(result, self.timeout)
        else:
            healthy = result == 200
            reason = f"status {result}"
        if not healthy:
            self.probes_failed += 1
            upstream.check_failures += 1
        self.last_results[upstream.name] = ProbeResult(healthy, reason, self._clock.seconds())
        self.log.debug(
            "health probe of {upstream}: {reason}",
            upstream=upstream.name,
            reason=reason,
            healthy=healthy,
        )
        streak = self._streaks.setdefault(upstream.name, _Streak())
        if healthy:
            streak.failures = 0
            streak.successes += 1
            if not upstream.alive and streak.successes >= self.rise:
                self._registry.mark_up(
                    upstream, f"{reason} ({_plural(streak.successes, 'success')})"
                )
        else:
            streak.successes = 0
            streak.failures += 1
            if upstream.alive and streak.failures >= self.fall:
                self._registry.mark_down(
                    upstream, f"{reason} ({_plural(streak.failures, 'failure')})"
                )

    def _record_failed(self, failure: Failure, upstream: UpstreamState) -> None:
        """
        Log a bug met while recording a result, so the round still completes.
        """
        self.log.failure(
            "recording the health of {upstream} failed", failure=failure, upstream=upstream.name
        )

    def _state_changed(self, upstream: UpstreamState) -> None:
        """
        Restart C{upstream}'s streak after any state change (ours, the
        relay's or the registry's passive retry).
        """
        self._streaks[upstream.name] = _Streak()

    def detach(self) -> None:
        """
        Stop watching the registry: this checker was replaced by a reload
        (after L{stopService}).
        """
        self._registry.remove_observer(self._state_changed)

    def _loop_failed(self, failure: Failure) -> None:
        """
        Log the loop stopping on an error; L{run_round} never fails, so this
        is a bug.
        """
        self.log.failure("health check loop stopped", failure=failure)
