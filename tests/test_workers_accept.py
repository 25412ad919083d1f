"""
Tests for L{balancebeam.workers.accept}: the shared seat table and the
balanced acceptor, on a fake listening socket and a memory reactor.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IListeningPort, IReadDescriptor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from balancebeam.workers.accept import (
    ACCEPTING,
    FREE,
    GREEDY_BATCH,
    PAUSE,
    STARTING,
    STOPPED,
    BalancedAcceptor,
    SeatTable,
)


def memory_table(seats: int = 8) -> SeatTable:
    """
    A seat table in a plain C{bytearray}.
    """
    return SeatTable(bytearray(SeatTable.size(seats)), seats)


class FakeConnection:
    """
    An accepted connection: a descriptor number, closed once adopted.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.closed = False

    def fileno(self) -> int:
        """
        Its descriptor.
        """
        return self.fd

    def close(self) -> None:
        """
        Close it (the reactor holds its own copy).
        """
        self.closed = True


class FakeListener:
    """
    A non-blocking listening socket with connections waiting in its queue.

    @ivar queue: descriptors of the connections waiting, oldest first.
    @ivar errors: errors C{accept} raises before the queue is served.
    """

    family = socket.AF_INET

    def __init__(self, waiting: int = 0) -> None:
        self.queue = list(range(100, 100 + waiting))
        self.errors: list[OSError] = []
        self.accepted: list[FakeConnection] = []
        self.closed = False

    def fileno(self) -> int:
        """
        A descriptor, or -1 once closed (as a real socket).
        """
        return -1 if self.closed else 7

    def accept(self) -> tuple[FakeConnection, tuple[str, int]]:
        """
        Take the oldest waiting connection.

        @raise BlockingIOError: when none waits.
        """
        if self.closed:
            raise OSError(errno.EBADF, "closed")
        if self.errors:
            raise self.errors.pop(0)
        if not self.queue:
            raise BlockingIOError(errno.EAGAIN, "would block")
        connection = FakeConnection(self.queue.pop(0))
        self.accepted.append(connection)
        return connection, ("127.0.0.1", 40000 + connection.fd)

    def getsockname(self) -> tuple[str, int]:
        """
        The bound address.
        """
        return ("127.0.0.1", 1100)

    def close(self) -> None:
        """
        Close this process's descriptor.
        """
        self.closed = True


class SeatTableTests(SynchronousTestCase):
    """
    L{SeatTable}: seats claimed and freed, and who may accept.
    """

    def test_claim_lowest_free(self) -> None:
        """
        Seats are handed out lowest first, and a freed seat is reused.
        """
        table = memory_table()
        self.assertEqual([table.claim() for _ in range(3)], [0, 1, 2])
        self.assertEqual(table.state(1), STARTING)
        table.release(1)
        self.assertEqual(table.state(1), FREE)
        self.assertEqual(table.claim(), 1)

    def test_all_taken(self) -> None:
        """
        Claiming when every seat is taken is an error.
        """
        table = memory_table(seats=2)
        table.claim()
        table.claim()
        self.assertRaises(RuntimeError, table.claim)

    def test_may_accept_up_to_least_busy_plus_slack(self) -> None:
        """
        A worker may accept while it holds at most one connection more than
        the least busy other accepting worker.
        """
        table = memory_table()
        mine, other = table.claim(), table.claim()
        table.set_state(other, ACCEPTING)
        table.publish(other, 4)
        self.assertTrue(table.may_accept(mine, 5))
        self.assertFalse(table.may_accept(mine, 6))
        self.assertTrue(table.may_accept(mine, 6, slack=2))

    def test_only_accepting_seats_count(self) -> None:
        """
        Workers starting, stopped or gone do not hold the others back.
        """
        table = memory_table()
        mine = table.claim()
        starting, stopped, gone = table.claim(), table.claim(), table.claim()
        table.set_state(stopped, STOPPED)
        table.release(gone)
        self.assertEqual(table.state(starting), STARTING)
        self.assertTrue(table.may_accept(mine, 1000))

    def test_release_clears_count(self) -> None:
        """
        A released seat's count is zero for its next worker.
        """
        table = memory_table()
        seat = table.claim()
        table.publish(seat, 9)
        table.release(seat)
        self.assertEqual(table.connections(table.claim()), 0)

    def test_shared_between_mappings(self) -> None:
        """
        A table created by the master is seen by a worker that maps its file.
        """
        table, fd = SeatTable.create(seats=4)
        self.addCleanup(table.close)
        worker = SeatTable.attach(fd, seats=4)
        self.addCleanup(worker.close)
        seat = table.claim()
        worker.publish(seat, 12)
        worker.set_state(seat, ACCEPTING)
        self.assertEqual((table.state(seat), table.connections(seat)), (ACCEPTING, 12))

    def test_small_buffer_refused(self) -> None:
        """
        A buffer too small for the seats is refused.
        """
        self.assertRaises(ValueError, SeatTable, bytearray(8), 4)


class AcceptorScenario:
    """
    An acceptor for seat 0 of a table where another worker sits in seat 1.
    """

    def __init__(self, waiting: int = 0, other: int | None = 0) -> None:
        self.reactor = MemoryReactorClock()
        self.table = memory_table()
        self.listener = FakeListener(waiting)
        self.held = 0
        self.seat = self.table.claim()
        self.other = self.table.claim()
        if other is not None:
            self.table.set_state(self.other, ACCEPTING)
            self.table.publish(self.other, other)
        self.factory = Factory.forProtocol(Protocol)
        self.queue_waiting: Callable[[object], bool] = lambda _: bool(self.listener.queue)
        self.acceptor = BalancedAcceptor(
            self.reactor,
            self.listener,  # type: ignore[arg-type]
            self.factory,
            self.table,
            self.seat,
            self.connections,
            waiting=lambda listener: self.queue_waiting(listener),
        )

    def connections(self) -> int:
        """
        The connections this worker holds: each adopted one counts.
        """
        return self.held + len(self.reactor.adoptedStreamConnections)

    def adopted(self) -> list[int]:
        """
        Descriptors handed to the reactor, in order.
        """
        return [fd for fd, _, _ in self.reactor.adoptedStreamConnections]


class BalancedAcceptorTests(SynchronousTestCase):
    """
    L{BalancedAcceptor} takes one connection at a time while within its
    share, steps back when over it, and never leaves connections waiting
    for long.
    """

    def test_interfaces(self) -> None:
        """
        It is a listening port and a read descriptor.
        """
        scenario = AcceptorScenario()
        verifyObject(IListeningPort, scenario.acceptor)
        verifyObject(IReadDescriptor, scenario.acceptor)

    def test_start_marks_seat_and_reads(self) -> None:
        """
        Starting marks the seat accepting and registers with the reactor.
        """
        scenario = AcceptorScenario()
        scenario.acceptor.startListening()
        self.assertEqual(scenario.table.state(scenario.seat), ACCEPTING)
        self.assertIn(scenario.acceptor, scenario.reactor.readers)
        self.assertEqual(scenario.acceptor.getHost(), IPv4Address("TCP", "127.0.0.1", 1100))

    def test_one_connection_per_read(self) -> None:
        """
        Each readiness event adopts exactly one waiting connection, with
        the factory, and closes the accepted copy.
        """
        scenario = AcceptorScenario(waiting=3, other=5)
        scenario.acceptor.startListening()
        scenario.acceptor.doRead()
        self.assertEqual(scenario.adopted(), [100])
        self.assertEqual(
            scenario.reactor.adoptedStreamConnections[0][1:],
            (socket.AF_INET, scenario.factory),
        )
        self.assertTrue(scenario.listener.accepted[0].closed)
        self.assertEqual(scenario.table.connections(scenario.seat), 1)

    def test_steps_back_over_share(self) -> None:
        """
        A worker holding two more connections than the other steps back:
        it stops reading and accepts nothing until the pause is over.
        """
        scenario = AcceptorScenario(waiting=5, other=0)
        scenario.acceptor.startListening()
        scenario.acceptor.doRead()
        scenario.acceptor.doRead()
        self.assertEqual(scenario.adopted(), [100, 101])
        scenario.acceptor.doRead()
        self.assertEqual(scenario.adopted(), [100, 101])
        self.assertEqual(scenario.acceptor.pauses, 1)
        self.assertNotIn(scenario.acceptor, scenario.reactor.readers)
        scenario.table.publish(scenario.other, 2)
        scenario.reactor.advance(PAUSE)
        self.assertIn(scenario.acceptor, scenario.reactor.readers)
        self.assertEqual(scenario.acceptor.greedy, 0)
        scenario.acceptor.doRead()
        self.assertEqual(scenario.adopted(), [100, 101, 102])

    def test_takes_what_others_leave(self) -> None:
        """
        Connections still waiting after a pause, while still over the share,
        are taken anyway: one, then two, then four... in a row.
        """
        scenario = AcceptorScenario(waiting=20, other=0)
        scenario.held = 5
        scenario.acceptor.startListening()
        taken = []
        for _ in range(4):
            scenario.acceptor.doRead()
            self.assertNotIn(scenario.acceptor, scenario.reactor.readers)
            before = len(scenario.adopted())
            scenario.reactor.advance(PAUSE)
            taken.append(len(scenario.adopted()) - before)
        self.assertEqual(taken, [1, 2, 4, 8])
        self.assertEqual(scenario.acceptor.greedy, 15)
        self.assertEqual(scenario.acceptor.pauses, 4)

    def test_greedy_batch_capped(self) -> None:
        """
        However long the others stay stuck, one batch takes at most
        L{GREEDY_BATCH} connections.
        """
        scenario = AcceptorScenario(waiting=500, other=0)
        scenario.held = 5
        scenario.acceptor.startListening()
        batches = []
        for _ in range(9):
            scenario.acceptor.doRead()
            before = len(scenario.adopted())
            scenario.reactor.advance(PAUSE)
            batches.append(len(scenario.adopted()) - before)
        self.assertEqual(max(batches), GREEDY_BATCH)
        self.assertEqual(batches[-2:], [GREEDY_BATCH, GREEDY_BATCH])

    def test_nothing_waiting_after_pause(self) -> None:
        """
        When the others took the waiting connections during the pause,
        nothing is taken and the acceptor reads again.
        """
        scenario = AcceptorScenario(waiting=1, other=0)
        scenario.held = 5
        scenario.acceptor.startListening()
        scenario.acceptor.doRead()
        scenario.listener.queue.clear()
        scenario.reactor.advance(PAUSE)
        self.assertEqual(scenario.adopted(), [])
        self.assertIn(scenario.acceptor, scenario.reactor.readers)

    def test_alone_accepts_freely(self) -> None:
        """
        With no other worker accepting, every readiness event accepts.
        """
        scenario = AcceptorScenario(waiting=4, other=None)
        scenario.held = 100
        scenario.acceptor.startListening()
        for _ in range(4):
            scenario.acceptor.doRead()
        self.assertEqual(scenario.adopted(), [100, 101, 102, 103])
        self.assertEqual(scenario.acceptor.pauses, 0)

    def test_aborted_connection_skipped(self) -> None:
        """
        A connection reset before it was accepted is skipped; the next one
        is taken in the same read.
        """
        scenario = AcceptorScenario(waiting=1, other=None)
        scenario.listener.errors.append(ConnectionAbortedError(errno.ECONNABORTED, "aborted"))
        scenario.acceptor.startListening()
        scenario.acceptor.doRead()
        self.assertEqual(scenario.adopted(), [100])

    def test_out_of_descriptors(self) -> None:
        """
        Running out of descriptors is logged, and accepting pauses for 0.1 s
        instead of spinning.
        """
        # Twisted annotates trial's TestCase, but the method only calls addCleanup.
        events = EventLoggingObserver.createWithCleanup(
            self, globalLogPublisher  # type: ignore[arg-type]
        )
        scenario = AcceptorScenario(waiting=1, other=None)
        scenario.listener.errors.append(OSError(errno.EMFILE, "Too many open files"))
        scenario.acceptor.startListening()
        scenario.acceptor.doRead()
        self.assertEqual(scenario.adopted(), [])
        self.assertNotIn(scenario.acceptor, scenario.reactor.readers)
        [event] = [e for e in events if e["log_format"].startswith("cannot accept")]
        self.assertEqual(event["reason"], "Too many open files")
        scenario.reactor.advance(0.1)
        self.assertIn(scenario.acceptor, scenario.reactor.readers)

    def test_stop_accepting_leaves_socket_open(self) -> None:
        """
        Stopping accepting marks the seat stopped and stops reading, but
        keeps the descriptor; L{stopListening} closes it.
        """
        scenario = AcceptorScenario(waiting=1, other=None)
        scenario.acceptor.startListening()
        scenario.acceptor.stop_accepting()
        self.assertEqual(scenario.table.state(scenario.seat), STOPPED)
        self.assertNotIn(scenario.acceptor, scenario.reactor.readers)
        self.assertFalse(scenario.listener.closed)
        self.successResultOf(scenario.acceptor.stopListening())
        self.assertTrue(scenario.listener.closed)

    def test_stop_during_pause(self) -> None:
        """
        An acceptor stopped while stepping back does not read again.
        """
        scenario = AcceptorScenario(waiting=5, other=0)
        scenario.held = 5
        scenario.acceptor.startListening()
        scenario.acceptor.doRead()
        scenario.acceptor.stop_accepting()
        scenario.reactor.advance(1)
        self.assertNotIn(scenario.acceptor, scenario.reactor.readers)
        self.assertEqual(scenario.adopted(), [])

    def test_reactor_shutdown(self) -> None:
        """
        When the reactor drops it at shutdown, it stops accepting.
        """
        scenario = AcceptorScenario()
        scenario.acceptor.startListening()
        scenario.reactor.removeAll()
        scenario.acceptor.connectionLost(Failure(Exception("shutdown")))
        self.assertEqual(scenario.table.state(scenario.seat), STOPPED)
