# -*- test-case-name: tests.test_workers_accept -*-
"""
Accepting connections on a socket shared by several workers, evenly.

Every worker waits on the same listening socket, and the kernel wakes them
all when a connection arrives; the first to run takes whatever is queued.
Twisted's own port (C{adoptStreamPort}) accepts up to a hundred connections
per wake-up, so under a burst (a load generator opening 50 connections at
once) one worker got 45 to 51 of them and the other the rest. Here each
worker accepts one connection at a time, and only while it does not hold
more connections than the least busy accepting worker (plus L{SLACK}); the
counts are published in a small table of shared memory (L{SeatTable}). A
worker over its share steps back for L{PAUSE} seconds; if connections are
still queued after that while it is still over its share, nobody else
took them (the others are busy or stuck) and it takes some anyway, more
each time in a row, so a connection never waits on balance for long.

Connections are handed to Twisted with C{reactor.adoptStreamConnection}.
"""

from __future__ import annotations

import errno
import mmap
import os
import select
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IProtocolFactory,
    IReadDescriptor,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

SEATS = 1024
"""Seats in a table (16 KiB): room for four generations of the most workers."""

FREE, STARTING, ACCEPTING, STOPPED = 0, 1, 2, 3
"""The states of a seat: no worker; a worker that does not accept yet;
one that accepts; one that stopped accepting (it drains)."""

SLACK = 1
"""How many more connections than the least busy worker a worker may hold
and still accept."""

PAUSE = 0.005
"""Seconds a worker over its share steps back before it looks again."""

GREEDY_BATCH = 64
"""The most connections taken at once, over its share, by a worker when
nobody else took them."""

_HEADER = 1
"""Slots of the table before the seats: the number of seats in use."""


class SeatTable:
    """
    The connection count and state of every worker, in memory shared by a
    master and its workers.

    The master gives each worker a seat (L{claim}) and frees it when the
    worker is gone (L{release}); the worker writes its own seat (L{publish},
    L{set_state}) and reads the others' (L{may_accept}). Each value is a
    naturally aligned 64-bit integer, written and read whole; a reader may
    see a count a moment old, which only makes the balance a little less
    even.
    """

    def __init__(self, buffer: Any, seats: int = SEATS) -> None:
        """
        @param buffer: writable memory of at least L{size}C{(seats)} bytes (an
            C{mmap} shared with the other processes, a C{bytearray} in tests).
        """
        self._buffer = buffer
        self._values = memoryview(buffer).cast("B").cast("q")
        if len(self._values) < _HEADER + 2 * seats:
            raise ValueError("the buffer is too small for the seats")
        self.seats = seats

    @staticmethod
    def size(seats: int = SEATS) -> int:
        """
        The bytes a table of C{seats} seats takes.
        """
        return 8 * (_HEADER + 2 * seats)

    @classmethod
    def create(cls, seats: int = SEATS) -> tuple[SeatTable, int]:
        """
        A new table in an anonymous shared file, for a master.

        @return: the table and the file's descriptor, to pass to workers
            (not inheritable otherwise).
        """
        size = cls.size(seats)
        memfd_create = getattr(os, "memfd_create", None)
        if memfd_create is not None:
            fd = memfd_create("balancebeam-seats", getattr(os, "MFD_CLOEXEC", 1))
        else:  # pragma: no cover (Linux has memfd_create)
            import tempfile

            with tempfile.TemporaryFile() as handle:
                fd = os.dup(handle.fileno())
            os.set_inheritable(fd, False)
        os.ftruncate(fd, size)
        return cls(mmap.mmap(fd, size), seats), fd

    @classmethod
    def attach(cls, fd: int, seats: int = SEATS) -> SeatTable:
        """
        Map the table a master created, in a worker.
        """
        return cls(mmap.mmap(fd, cls.size(seats)), seats)

    def close(self) -> None:
        """
        Unmap the table (an C{mmap}; a C{bytearray} is left alone).
        """
        self._values.release()
        close = getattr(self._buffer, "close", None)
        if close is not None:
            close()

    def claim(self) -> int:
        """
        Give a seat to a worker about to start: the lowest free one.

        @raise RuntimeError: when every seat is taken.
        """
        values = self._values
        for seat in range(self.seats):
            if values[_HEADER + 2 * seat] == FREE:
                values[_HEADER + 2 * seat + 1] = 0
                values[_HEADER + 2 * seat] = STARTING
                if seat + 1 > values[0]:
                    values[0] = seat + 1
                return seat
        raise RuntimeError(f"all {self.seats} seats are taken")

    def release(self, seat: int) -> None:
        """
        Free the seat of a worker that is gone.
        """
        values = self._values
        values[_HEADER + 2 * seat] = FREE
        values[_HEADER + 2 * seat + 1] = 0
        high = values[0]
        while high and values[_HEADER + 2 * (high - 1)] == FREE:
            high -= 1
        values[0] = high

    def state(self, seat: int) -> int:
        """
        The state of a seat.
        """
        return int(self._values[_HEADER + 2 * seat])

    def connections(self, seat: int) -> int:
        """
        The connection count last published for a seat.
        """
        return int(self._values[_HEADER + 2 * seat + 1])

    def set_state(self, seat: int, state: int) -> None:
        """
        A worker says whether it accepts (L{ACCEPTING}) or has stopped (L{STOPPED}).
        """
        self._values[_HEADER + 2 * seat] = state

    def publish(self, seat: int, connections: int) -> None:
        """
        A worker publishes how many connections it holds.
        """
        self._values[_HEADER + 2 * seat + 1] = connections

    def may_accept(self, seat: int, connections: int, slack: int = SLACK) -> bool:
        """
        Whether the worker in C{seat}, holding C{connections}, may accept
        one more: it holds no more than C{slack} above the least busy
        other accepting worker (or no other worker accepts).
        """
        values = self._values
        least = -1
        for other in range(int(values[0])):
            if other != seat and values[_HEADER + 2 * other] == ACCEPTING:
                count = values[_HEADER + 2 * other + 1]
                if least < 0 or count < least:
                    least = count
        return least < 0 or connections <= least + slack


def _readable(listener: socket.socket) -> bool:
    """
    Whether a connection is waiting on C{listener}, without waiting.
    """
    poller = select.poll()
    poller.register(listener.fileno(), select.POLLIN)
    return bool(poller.poll(0))


@implementer(IListeningPort, IReadDescriptor)
class BalancedAcceptor:
    """
    Accepts connections on a shared listening socket, one at a time and
    only while this worker holds no more than its share (L{SeatTable}).

    @ivar accepted: connections accepted so far.
    @ivar pauses: times this worker stepped back because it held more than
        its share.
    @ivar greedy: connections taken because they were still waiting after a
        pause.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        listener: socket.socket,
        factory: IProtocolFactory,
        table: SeatTable,
        seat: int,
        connections: Callable[[], int],
        *,
        pause: float = PAUSE,
        slack: int = SLACK,
        waiting: Callable[[socket.socket], bool] = _readable,
    ) -> None:
        """
        @param reactor: an C{IReactorFDSet}, C{IReactorSocket} and
            C{IReactorTime} provider.
        @param listener: this worker's descriptor of the shared socket,
            non-blocking; closed by L{stopListening}.
        @param factory: builds the protocol of each connection.
        @param connections: how many client connections this worker holds.
        @param pause: seconds to step back when over the share.
        @param slack: connections above the least busy worker still allowed.
        @param waiting: whether a connection waits on the socket now
            (a non-blocking C{poll}; tests replace it).
        """
        self._reactor = reactor
        self._listener = listener
        self._factory = factory
        self._table = table
        self._seat = seat
        self._connections = connections
        self._pause = pause
        self._slack = slack
        self._waiting = waiting
        self._family = listener.family
        self._reading = False
        self._stopped = False
        self._resume: IDelayedCall | None = None
        self._greedy_batch = 1
        self.accepted = 0
        self.pauses = 0
        self.greedy = 0

    # IListeningPort

    def startListening(self) -> None:
        """
        Start accepting: mark the seat L{ACCEPTING} and wait for connections.
        """
        self._factory.doStart()
        self._table.publish(self._seat, self._connections())
        self._table.set_state(self._seat, ACCEPTING)
        self._start_reading()

    def stop_accepting(self) -> None:
        """
        Accept no more connections (the worker drains): the seat is marked
        L{STOPPED} and the socket left to the other workers. The descriptor
        stays open until L{stopListening} or the process ends.
        """
        if self._stopped:
            return
        self._stopped = True
        self._table.set_state(self._seat, STOPPED)
        self._stop_reading()
        if self._resume is not None and self._resume.active():
            self._resume.cancel()
        self._resume = None

    def stopListening(self) -> Deferred[None]:
        """
        Stop accepting and close this worker's descriptor of the socket
        (the socket itself stays open in the master and the other workers).
        """
        self.stop_accepting()
        if self._listener.fileno() != -1:
            self._listener.close()
            self._factory.doStop()
        return succeed(None)

    def getHost(self) -> IPv4Address | IPv6Address:
        """
        The address the shared socket is bound to.
        """
        address = self._listener.getsockname()
        if self._family == socket.AF_INET6:
            return IPv6Address("TCP", address[0], address[1])
        return IPv4Address("TCP", address[0], address[1])

    # IReadDescriptor

    def fileno(self) -> int:
        """
        The shared socket's descriptor in this process.
        """
        return self._listener.fileno()

    def logPrefix(self) -> str:
        """
        The prefix of legacy log lines.
        """
        return "BalancedAcceptor"

    def connectionLost(self, reason: Failure) -> None:
        """
        The reactor dropped this reader (it is shutting down): stop accepting.
        """
        self._reading = False
        self.stop_accepting()

    def doRead(self) -> None:
        """
        A connection is waiting: take one if this worker holds no more than
        its share, else step back for a moment.
        """
        connections = self._connections()
        self._table.publish(self._seat, connections)
        if not self._table.may_accept(self._seat, connections, self._slack):
            self.pauses += 1
            self._stop_reading()
            self._resume = self._reactor.callLater(self._pause, self._resumed)
            return
        self._accept(1)

    # Inside

    def _resumed(self) -> None:
        """
        The pause is over. A worker back within its share accepts one at a
        time again. One still over it, with connections still waiting, takes
        some: nobody else did, so the others are busy or stuck; it takes
        twice as many each time this happens in a row (up to
        L{GREEDY_BATCH}), so a stuck worker cannot hold new connections up
        for long.
        """
        self._resume = None
        if self._stopped:
            return
        connections = self._connections()
        if not self._table.may_accept(
            self._seat, connections, self._slack
        ) and self._waiting(self._listener):
            taken = self._accept(self._greedy_batch)
            self.greedy += taken
            self._greedy_batch = min(GREEDY_BATCH, 2 * self._greedy_batch)
        else:
            self._greedy_batch = 1
        self._start_reading()

    def _accept(self, limit: int) -> int:
        """
        Accept up to C{limit} connections, stopping when none is waiting.

        @return: how many were accepted.
        """
        accepted = 0
        while accepted < limit:
            try:
                connection, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionAbortedError:
                continue
            except OSError as error:
                self._accept_failed(error)
                break
            try:
                self._reactor.adoptStreamConnection(
                    connection.fileno(), self._family, self._factory
                )
            except OSError as error:
                self._accept_failed(error)
                break
            finally:
                connection.close()
            accepted += 1
            self.accepted += 1
        if accepted:
            self._table.publish(self._seat, self._connections())
        return accepted

    def _accept_failed(self, error: OSError) -> None:
        """
        Accepting failed for want of resources (descriptors, memory): say
        so and wait a little before trying again.
        """
        if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            reason = os.strerror(error.errno)
        else:
            reason = str(error)
        self.log.warn("cannot accept a connection: {reason}; retrying in 0.1 s", reason=reason)
        self._stop_reading()
        if self._resume is None and not self._stopped:
            self._resume = self._reactor.callLater(0.1, self._resumed)

    def _start_reading(self) -> None:
        if not self._reading and not self._stopped:
            self._reading = True
            self._reactor.addReader(self)

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._reactor.removeReader(self)
