"""
Requests per second over the last minute, sampled on the injected clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall


class RequestRate(Service):
    """
    Samples a monotonic counter every C{interval} seconds and keeps the
    samples of the last C{window} seconds, so that L{per_second} is the
    counter's rate over that window (or over the time since start, when
    shorter). Nothing is done per request.
    """

    def __init__(
        self,
        clock: IReactorTime,
        count: Callable[[], int],
        window: float = 60.0,
        interval: float = 1.0,
    ) -> None:
        self.setName("request rate")
        self._clock = clock
        self._count = count
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()
        self._loop = LoopingCall(self.sample)
        self._loop.clock = clock
        self._interval = interval

    def startService(self) -> None:
        """
        Take the first sample now, then one every interval.
        """
        super().startService()
        self._loop.start(self._interval, now=True)

    def stopService(self) -> None:
        """
        Stop sampling.
        """
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def sample(self) -> None:
        """
        Record the counter now, and forget samples older than the window
        (keeping one at or before its start).
        """
        now = self._clock.seconds()
        samples = self._samples
        samples.append((now, self._count()))
        while len(samples) > 2 and samples[1][0] <= now - self.window:
            samples.popleft()

    def per_second(self) -> float:
        """
        The counter's rate over the last window, from the oldest sample kept
        to the counter now; 0 before any time has passed.
        """
        if not self._samples:
            return 0.0
        then, count_then = self._samples[0]
        elapsed = self._clock.seconds() - then
        if elapsed <= 0:
            return 0.0
        return max(0, self._count() - count_then) / elapsed
