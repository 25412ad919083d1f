# -*- test-case-name: tests.test_workers_worker -*-
"""
The worker's end of the control channel to its master
(L{balancebeam.workers.control}): L{ControlProtocol}, on the worker's
standard input and descriptor 3.

It hands what it hears to the worker through L{ControlledWorker}
(L{balancebeam.workers.worker.Worker} provides it), so this module does not
import the worker.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from balancebeam.workers.control import Message, MessageDecoder, encode


class ControlledWorker(typing.Protocol):
    """
    What L{ControlProtocol} tells the worker
    (L{balancebeam.workers.worker.Worker}).
    """

    def message_received(self, message: Message) -> None:
        """
        Act on one message from the master.
        """

    def master_gone(self) -> None:
        """
        The master's pipe closed: the master is gone.
        """


@implementer(IHalfCloseableProtocol)
class ControlProtocol(Protocol):
    """
    The worker's end of the control channel (its standard input and
    descriptor 3, through C{StandardIO}).
    """

    log = Logger()

    def __init__(self, worker: ControlledWorker) -> None:
        self._worker = worker
        self._decoder = MessageDecoder()
        self._flushed: Deferred[None] | None = None
        self.write_closed = False

    def dataReceived(self, data: bytes) -> None:
        """
        Hand each message to the worker.
        """
        for message in self._decoder.feed(data):
            self._worker.message_received(message)

    def send(self, message: Mapping[str, object]) -> None:
        """
        Send one message to the master (dropped once the pipe is closed).
        """
        if self.transport is not None and not self.write_closed:
            self.transport.write(encode(message))

    def close_write(self) -> Deferred[None]:
        """
        Close the pipe to the master once what was sent has been written.

        @return: fires when it is closed.
        """
        if self.write_closed or self.transport is None:
            return succeed(None)
        self._flushed = Deferred()
        self.transport.loseWriteConnection()  # type: ignore[attr-defined]
        return self._flushed

    def readConnectionLost(self) -> None:
        """
        The master's pipe closed: the master is gone.
        """
        self._worker.master_gone()

    def writeConnectionLost(self) -> None:
        """
        The pipe to the master is closed (by us, or the master is gone).
        """
        self.write_closed = True
        flushed, self._flushed = self._flushed, None
        if flushed is not None:
            flushed.callback(None)

    def connectionLost(self, reason: Failure | None = None) -> None:
        """
        Both pipes are closed.
        """
        self.writeConnectionLost()
