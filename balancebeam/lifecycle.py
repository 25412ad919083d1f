"""
Service-tree plumbing for L{balancebeam.service.BalancerService}: a service
made of a start and a stop function (for the objects that are not services
themselves), and a L{MultiService} that stops its children one after the
other, last added first, each once the previous one has finished stopping.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure


class _Lifecycle(Service):
    """
    A service made of a start and a stop function, for the objects that are
    not services themselves (the pool, the rate limiter).
    """

    def __init__(
        self,
        name: str,
        start: Callable[[], object],
        stop: Callable[[], Deferred[Any] | None],
    ) -> None:
        self.setName(name)
        self._start = start
        self._stop = stop

    def startService(self) -> None:
        """
        Run the start function.
        """
        super().startService()
        self._start()

    def stopService(self) -> Deferred[Any]:
        """
        Run the stop function.

        @return: fires once it has finished.
        """
        super().stopService()
        return maybeDeferred(self._stop)


class _SequentialMultiService(MultiService):
    """
    A L{MultiService} that stops its children one after the other, last
    added first, each once the previous one has finished stopping.
    """

    def stopService(self) -> Deferred[None]:
        """
        Stop the children in reverse order, one at a time.
        """
        Service.stopService(self)
        done: Deferred[Any] = succeed(None)
        for child in reversed(list(self)):
            done.addCallback(_stop_child, child)
        return done.addCallback(lambda _: None)


def _stop_child(_: object, child: IService) -> Deferred[Any]:
    return maybeDeferred(child.stopService).addErrback(_log_stop_failure, child)


def _log_stop_failure(failure: Failure, child: IService) -> None:
    # The namespace it had in balancebeam.service, where this came from.
    Logger().failure(
        "stopping {service} failed", failure, service=child.name
    )
