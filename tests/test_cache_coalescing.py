"""
Tests for L{balancebeam.cache.coalescing}: one fill per key, waiters, lock timeout.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from balancebeam.cache.coalescing import FAILED, RELEASED, STORED, TIMEOUT, Coalescer


class CoalescerTests(SynchronousTestCase):
    """
    Tests for L{Coalescer} and L{Fill}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.coalescer = Coalescer(self.clock, 5.0)

    def test_one_fill_per_key(self) -> None:
        """
        A second begin on a key in flight gets None; another key gets its own fill.
        """
        fill = self.coalescer.begin("a")
        self.assertIsNotNone(fill)
        self.assertIsNone(self.coalescer.begin("a"))
        self.assertIsNotNone(self.coalescer.begin("b"))
        self.assertEqual(len(self.coalescer), 2)

    def test_no_fill_no_wait(self) -> None:
        """
        Waiting on a key with no fill in flight gives None.
        """
        self.assertIsNone(self.coalescer.wait("a"))

    def test_waiters_get_outcome(self) -> None:
        """
        Every waiter gets the fill's outcome, and the key is free again.
        """
        fill = self.coalescer.begin("a")
        assert fill is not None
        first = self.coalescer.wait("a")
        second = self.coalescer.wait("a")
        assert first is not None and second is not None
        self.assertEqual(fill.waiters, 2)
        self.assertNoResult(first)
        fill.finish(STORED)
        self.assertEqual(self.successResultOf(first), STORED)
        self.assertEqual(self.successResultOf(second), STORED)
        self.assertEqual(len(self.coalescer), 0)
        self.assertFalse(fill.open)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertIsNotNone(self.coalescer.begin("a"))

    def test_finish_twice(self) -> None:
        """
        Finishing again does nothing, and does not forget a newer fill of the key.
        """
        fill = self.coalescer.begin("a")
        assert fill is not None
        fill.finish(RELEASED)
        newer = self.coalescer.begin("a")
        assert newer is not None
        fill.finish(FAILED)
        self.assertIsNone(self.coalescer.begin("a"))
        waiting = self.coalescer.wait("a")
        assert waiting is not None
        newer.finish(FAILED)
        self.assertEqual(self.successResultOf(waiting), FAILED)

    def test_timeout(self) -> None:
        """
        A waiter gets TIMEOUT after the lock timeout, not before; the fill goes on.
        """
        fill = self.coalescer.begin("a")
        assert fill is not None
        waiting = self.coalescer.wait("a")
        assert waiting is not None
        self.clock.advance(4.999)
        self.assertNoResult(waiting)
        self.clock.advance(0.001)
        self.assertEqual(self.successResultOf(waiting), TIMEOUT)
        self.assertEqual(fill.waiters, 0)
        self.assertTrue(fill.open)

    def test_cancel(self) -> None:
        """
        Cancelling a wait removes the waiter and its timer.
        """
        fill = self.coalescer.begin("a")
        assert fill is not None
        waiting = self.coalescer.wait("a")
        assert waiting is not None
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        self.assertEqual(fill.waiters, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
