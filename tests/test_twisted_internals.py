"""
Tests for L{balancebeam.twisted_internals}: the Twisted versions its fast
paths were checked against, the choice between them and their public-API
fallbacks, L{send_direct} on real TCP connections, and the reactors that
C{balancebeam-epoll} installs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from twisted.application.reactors import IReactorInstaller
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.plugin import getPlugins
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

import twisted
from balancebeam import twisted_internals
from balancebeam.relay.transport import StreamTransport
from balancebeam.twisted_internals import (
    LEAN_REACTOR_CHECKED_VERSIONS,
    SEND_NOW_CHECKED_VERSIONS,
    SWITCH_VARIABLE,
    LeanEPollReactor,
    build_reactor,
    choose_send,
    fallback_reason,
    send_direct,
    send_now,
    write_plain,
)

#: The repository root, put on C{PYTHONPATH} for subprocesses.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(twisted_internals.__file__)))

#: A Twisted version that nothing was checked against.
UNCHECKED = "99.1.0"


class CheckedVersionsTests(SynchronousTestCase):
    """
    The installed Twisted is one the fast paths were checked against.
    """

    def test_installed_twisted_checked_for_send_now(self) -> None:
        """
        Fails when the installed Twisted is not in SEND_NOW_CHECKED_VERSIONS:
        after an upgrade, compare the new release's tcp.Connection write path
        with the one send_direct relies on, then add the version.
        """
        self.assertIn(twisted.__version__, SEND_NOW_CHECKED_VERSIONS)

    def test_installed_twisted_checked_for_lean_reactor(self) -> None:
        """
        Fails when the installed Twisted is not in LEAN_REACTOR_CHECKED_VERSIONS:
        after an upgrade, compare the new release's EPollReactor.doPoll with
        LeanEPollReactor.doPoll, then add the version.
        """
        self.assertIn(twisted.__version__, LEAN_REACTOR_CHECKED_VERSIONS)

    def test_versions_are_exact_releases(self) -> None:
        """
        Every checked version is an exact release string, never a prefix.
        """
        for version in SEND_NOW_CHECKED_VERSIONS + LEAN_REACTOR_CHECKED_VERSIONS:
            self.assertRegex(version, r"\A\d+\.\d+\.\d+\Z")


class FallbackChoiceTests(SynchronousTestCase):
    """
    L{fallback_reason} and L{choose_send} pick the fast path only for checked
    versions and without the switch.
    """

    def test_checked_versions_use_fast_path(self) -> None:
        """
        Every checked version, with no switch set, gets the fast path.
        """
        for version in SEND_NOW_CHECKED_VERSIONS:
            self.assertIsNone(fallback_reason(SEND_NOW_CHECKED_VERSIONS, version, {}))
            self.assertIs(choose_send(version, {}), send_direct)

    def test_unchecked_version_falls_back(self) -> None:
        """
        A version not in the list (a newer release, a pre-release, a prefix)
        gets the fallback, and the reason names it.
        """
        for version in (UNCHECKED, "26.10.0rc1", "26.10", "26.10.0.post1"):
            reason = fallback_reason(SEND_NOW_CHECKED_VERSIONS, version, {})
            self.assertEqual(
                reason,
                f"Twisted {version} is not among the versions it was checked against "
                f"({', '.join(SEND_NOW_CHECKED_VERSIONS)})",
            )
            self.assertIs(choose_send(version, {}), write_plain)

    def test_switch_off_forces_fallback(self) -> None:
        """
        BALANCEBEAM_TWISTED_INTERNALS=off (any case, spaces around) forces the
        fallback on a checked version.
        """
        for value in ("off", "OFF", " Off "):
            environ = {SWITCH_VARIABLE: value}
            self.assertEqual(
                fallback_reason(SEND_NOW_CHECKED_VERSIONS, twisted.__version__, environ),
                "BALANCEBEAM_TWISTED_INTERNALS=off",
            )
            self.assertIs(choose_send(twisted.__version__, environ), write_plain)

    def test_other_switch_values_leave_the_version_check(self) -> None:
        """
        Any other value of the switch changes nothing: checked versions keep
        the fast path, others still fall back.
        """
        for value in ("", "on", "1", "auto"):
            environ = {SWITCH_VARIABLE: value}
            self.assertIs(choose_send(twisted.__version__, environ), send_direct)
            self.assertIs(choose_send(UNCHECKED, environ), write_plain)

    def test_module_choice_follows_version_and_environment(self) -> None:
        """
        The module's send_now and the reactor's fallback were chosen at import
        from the installed Twisted and this process's environment.
        """
        self.assertIs(send_now, choose_send(twisted.__version__, os.environ))
        self.assertEqual(
            twisted_internals.SEND_NOW_FALLBACK,
            fallback_reason(SEND_NOW_CHECKED_VERSIONS, twisted.__version__, os.environ),
        )
        self.assertEqual(
            twisted_internals.LEAN_REACTOR_FALLBACK,
            fallback_reason(LEAN_REACTOR_CHECKED_VERSIONS, twisted.__version__, os.environ),
        )


class WriteOtherTransportsTests(SynchronousTestCase):
    """
    Transports that are not plain TCP get an ordinary write, on both paths.
    """

    def test_send_direct_on_other_transports_is_write(self) -> None:
        """
        On a StringTransport, send_direct is exactly transport.write.
        """
        transport = StringTransport()
        send_direct(transport, b"abc")
        send_direct(transport, b"def")
        self.assertEqual(transport.value(), b"abcdef")

    def test_write_plain_is_write(self) -> None:
        """
        write_plain hands the bytes to transport.write, in order.
        """
        transport = StringTransport()
        write_plain(transport, b"abc")
        write_plain(transport, b"def")
        self.assertEqual(transport.value(), b"abcdef")


class _Collector(Protocol):
    """
    Collects what it receives; C{done} fires once C{expected} bytes arrived,
    C{lost} when the connection closes.
    """

    def __init__(self, expected: int) -> None:
        self.received = b""
        self.expected = expected
        self.done: Deferred[bytes] = Deferred()
        self.lost: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= self.expected and not self.done.called:
            self.done.callback(self.received)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(self.received)


@implementer(IHalfCloseableProtocol)
class _HalfCloseCollector(_Collector):
    """
    A collector that stays open when its peer half-closes; C{half_closed}
    fires with what it had received by then.
    """

    def __init__(self, expected: int) -> None:
        super().__init__(expected)
        self.half_closed: Deferred[bytes] = Deferred()

    def readConnectionLost(self) -> None:
        self.half_closed.callback(self.received)
        assert self.transport is not None
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


class _Sender(Protocol):
    """
    The sending side; C{lost} fires when its connection is gone.
    """

    def __init__(self) -> None:
        self.lost: Deferred[None] = Deferred()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(None)


class SendOnTCPTests(TestCase):
    """
    On real TCP connections, send_direct bypasses Twisted's queue only when it
    is empty and the connection open, and write_plain always queues.
    """

    async def _connected_pair(
        self, expected: int, collector: _Collector | None = None
    ) -> tuple[StreamTransport, _Sender, _Collector]:
        collector = collector or _Collector(expected)
        factory = Factory.forProtocol(lambda: collector)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        sender = await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), _Sender()
        )
        assert sender.transport is not None
        # Cleanups run last-in first-out: close, then wait for the peer to see it.
        self.addCleanup(lambda: collector.lost)
        self.addCleanup(sender.transport.loseConnection)
        return sender.transport, sender, collector

    async def test_empty_queue_sends_directly(self) -> None:
        """
        With nothing queued, the data goes to the socket at once and nothing is
        left in Twisted's buffer.
        """
        transport, _, collector = await self._connected_pair(5)
        send_direct(transport, b"hello")
        self.assertEqual(transport._tempDataLen, 0)  # type: ignore[attr-defined]  # tcp.Client internals
        self.assertEqual(await collector.done, b"hello")

    async def test_queued_data_keeps_order(self) -> None:
        """
        With data already queued by write(), send_direct queues behind it, so
        the peer receives everything in order.
        """
        transport, _, collector = await self._connected_pair(10)
        transport.write(b"first")
        send_direct(transport, b"later")
        self.assertEqual(transport._tempDataLen, 10)  # type: ignore[attr-defined]  # tcp.Client internals
        self.assertEqual(await collector.done, b"firstlater")

    async def test_large_write_partially_queued(self) -> None:
        """
        Data larger than the kernel takes at once is partly sent and partly
        queued, and arrives complete and in order with what follows.
        """
        payload = bytes(range(256)) * 40000
        transport, _, collector = await self._connected_pair(len(payload) + 3)
        send_direct(transport, payload)
        queued = transport._tempDataLen  # type: ignore[attr-defined]  # tcp.Client internals
        self.assertGreater(queued, 0)
        self.assertLess(queued, len(payload))
        send_direct(transport, b"end")
        self.assertEqual(transport._tempDataLen, queued + 3)  # type: ignore[attr-defined]  # idem
        self.assertEqual(await collector.done, payload + b"end")

    async def test_closing_transport_queues(self) -> None:
        """
        After loseConnection(), send_direct leaves the bytes to Twisted, which
        sends them before closing, as write() would.
        """
        transport, _, collector = await self._connected_pair(3)
        transport.loseConnection()
        send_direct(transport, b"bye")
        self.assertEqual(transport._tempDataLen, 3)  # type: ignore[attr-defined]  # tcp.Client internals
        self.assertEqual(await collector.lost, b"bye")

    async def test_closed_transport_drops_silently(self) -> None:
        """
        Once the connection is lost (closed here), send_direct neither raises
        nor sends, like write().
        """
        transport, sender, collector = await self._connected_pair(1)
        transport.loseConnection()
        await sender.lost
        send_direct(transport, b"late")
        self.assertEqual(transport._tempDataLen, 0)  # type: ignore[attr-defined]  # tcp.Client internals
        self.assertEqual(await collector.lost, b"")

    async def test_transport_closed_by_peer_drops_silently(self) -> None:
        """
        Once the peer has closed the connection, send_direct neither raises
        nor sends, like write().
        """
        transport, sender, collector = await self._connected_pair(1)
        assert collector.transport is not None
        collector.transport.loseConnection()
        await sender.lost
        send_direct(transport, b"late")
        self.assertEqual(transport._tempDataLen, 0)  # type: ignore[attr-defined]  # tcp.Client internals
        self.assertEqual(await collector.lost, b"")

    async def test_half_closed_transport_drops_silently(self) -> None:
        """
        After the write side was shut down (loseWriteConnection, then the
        reactor's flush), send_direct neither raises nor sends, like write().
        """
        collector = _HalfCloseCollector(5)
        transport, sender, _ = await self._connected_pair(5, collector)
        send_direct(transport, b"early")
        transport.loseWriteConnection()  # type: ignore[attr-defined]  # ITCPTransport
        self.assertEqual(await collector.half_closed, b"early")
        send_direct(transport, b"late")
        self.assertEqual(transport._tempDataLen, 0)  # type: ignore[attr-defined]  # tcp.Client internals
        self.assertEqual(await collector.lost, b"early")

    async def test_write_plain_queues_until_the_reactor_turns(self) -> None:
        """
        The fallback never touches the socket: the bytes wait in Twisted's
        queue and arrive in order.
        """
        transport, _, collector = await self._connected_pair(10)
        write_plain(transport, b"hello")
        write_plain(transport, b"world")
        self.assertEqual(transport._tempDataLen, 10)  # type: ignore[attr-defined]  # tcp.Client internals
        self.assertEqual(await collector.done, b"helloworld")


class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class _Client(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost = False

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"ping" * 1000)

    def dataReceived(self, data: bytes) -> None:
        self.received += data


def _factory_for(client: _Client) -> ClientFactory:
    factory = ClientFactory()
    factory.buildProtocol = lambda addr: client  # type: ignore[method-assign]  # one prepared protocol
    return factory


class _Broken(Protocol):
    def dataReceived(self, data: bytes) -> None:
        raise RuntimeError("a bug in a protocol")


class LeanReactorBehaviourTests(SynchronousTestCase):
    """
    The reactor that C{balancebeam-epoll} builds on a checked Twisted, the
    lean one, dispatches events like Twisted's epoll reactor. Each test
    spins a private reactor, never the global one.
    """

    fallback: str | None = None
    expected_type: type[EPollReactor] = LeanEPollReactor

    def setUp(self) -> None:
        self.reactor = build_reactor(self.fallback)
        self.addCleanup(self._close)

    def _close(self) -> None:
        for selectable in self.reactor.removeAll():
            selectable.connectionLost(Failure(ConnectionDone()))
        self.reactor.waker.connectionLost(None)
        self.reactor._poller.close()

    def _spin(self, done: Callable[[], bool], limit: int = 2000) -> None:
        for _ in range(limit):
            if done():
                return
            self.reactor.iterate(0.01)
        self.fail("the exchange did not finish")

    def test_reactor_type(self) -> None:
        """
        The reactor under test is exactly the expected class.
        """
        self.assertIs(type(self.reactor), self.expected_type)

    def test_bytes_round_trip(self) -> None:
        """
        A client and an echo server on the reactor exchange 4000 bytes.
        """
        port = self.reactor.listenTCP(0, Factory.forProtocol(_Echo), interface="127.0.0.1")
        client = _Client()
        self.reactor.connectTCP("127.0.0.1", port.getHost().port, _factory_for(client))
        self._spin(lambda: len(client.received) >= 4000)
        self.assertEqual(client.received, b"ping" * 1000)

    def test_protocol_error_disconnects_and_is_logged(self) -> None:
        """
        An exception in a protocol is logged and drops that connection only.
        """
        port = self.reactor.listenTCP(0, Factory.forProtocol(_Broken), interface="127.0.0.1")
        client = _Client()
        self.reactor.connectTCP("127.0.0.1", port.getHost().port, _factory_for(client))
        self._spin(lambda: client.lost)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class StockReactorBehaviourTests(LeanReactorBehaviourTests):
    """
    The reactor that C{balancebeam-epoll} builds on any other Twisted (or
    with the switch off), Twisted's stock epoll reactor, behaves the same.
    """

    fallback = f"Twisted {UNCHECKED} is not among the versions it was checked against (x)"
    expected_type = EPollReactor


class BuildReactorTests(SynchronousTestCase):
    """
    L{build_reactor} picks the reactor and says when it falls back.
    """

    def _built(self, fallback: str | None) -> EPollReactor:
        built = build_reactor(fallback)
        self.addCleanup(built._poller.close)
        self.addCleanup(built.waker.connectionLost, None)
        return built

    def test_lean_reactor_built_without_log(self) -> None:
        """
        With no reason to fall back, the reactor is a LeanEPollReactor and
        nothing is logged.
        """
        events = EventLoggingObserver.createWithCleanup(
            self, globalLogPublisher  # type: ignore[arg-type]  # only calls addCleanup
        )
        self.assertIs(type(self._built(None)), LeanEPollReactor)
        self.assertEqual(len(events), 0)

    def test_stock_reactor_built_and_logged(self) -> None:
        """
        The fallback reactor is exactly EPollReactor, and one info event gives
        the reason.
        """
        events = EventLoggingObserver.createWithCleanup(
            self, globalLogPublisher  # type: ignore[arg-type]  # only calls addCleanup
        )
        self.assertIs(type(self._built("BALANCEBEAM_TWISTED_INTERNALS=off")), EPollReactor)
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["log_level"], LogLevel.info)
        self.assertEqual(
            formatEvent(events[0]),
            "reactor balancebeam-epoll: BALANCEBEAM_TWISTED_INTERNALS=off; "
            "installing Twisted's stock epoll reactor",
        )


#: Imports the module in a fresh interpreter (optionally pretending to be
#: another Twisted version), installs balancebeam-epoll, and prints the
#: choices and the log events emitted meanwhile.
_PROBE = """
import sys
import twisted
if len(sys.argv) > 1:
    twisted.__version__ = sys.argv[1]
from twisted.logger import formatEvent, globalLogBeginner
from balancebeam import twisted_internals as internals
internals.install()
from twisted.internet import reactor
print("reactor", type(reactor).__name__)
print("send_now", internals.send_now.__name__)
globalLogBeginner.beginLoggingTo(
    [lambda event: print("log", formatEvent(event))], redirectStandardIO=False
)
"""


class ImportTimeChoiceTests(TestCase):
    """
    In a fresh process, the module's import-time check and install() pick
    the fast paths or the fallbacks.
    """

    async def _probe(self, version: str | None, switch: str | None) -> list[str]:
        environ = {k: v for k, v in os.environ.items() if k != SWITCH_VARIABLE}
        environ["PYTHONPATH"] = os.pathsep.join(
            [REPO_ROOT] + ([environ["PYTHONPATH"]] if environ.get("PYTHONPATH") else [])
        )
        if switch is not None:
            environ[SWITCH_VARIABLE] = switch
        arguments = ["-c", _PROBE] + ([version] if version else [])
        out, err, code = await getProcessOutputAndValue(
            sys.executable, arguments, env=environ, path=REPO_ROOT
        )
        self.assertEqual((code, err), (0, b""))
        return out.decode().splitlines()

    async def test_installed_version_uses_fast_paths(self) -> None:
        """
        On the installed (checked) Twisted, balancebeam-epoll installs the lean
        reactor, send_now sends directly, and nothing is logged.
        """
        lines = await self._probe(None, None)
        self.assertEqual(lines, ["reactor LeanEPollReactor", "send_now send_direct"])

    async def test_unchecked_version_uses_fallbacks(self) -> None:
        """
        With twisted.__version__ patched to an unchecked release before the
        import, the stock reactor is installed, send_now is write_plain, and
        each fallback is logged once.
        """
        lines = await self._probe(UNCHECKED, None)
        reason = (
            f"Twisted {UNCHECKED} is not among the versions it was checked against "
            f"({', '.join(SEND_NOW_CHECKED_VERSIONS)})"
        )
        self.assertEqual(
            lines,
            [
                "reactor EPollReactor",
                "send_now write_plain",
                f"log send_now falls back to transport.write: {reason}",
                f"log reactor balancebeam-epoll: {reason}; installing Twisted's stock "
                "epoll reactor",
            ],
        )

    async def test_switch_off_uses_fallbacks(self) -> None:
        """
        BALANCEBEAM_TWISTED_INTERNALS=off on the installed Twisted gives the
        same fallbacks, with the switch as the logged reason.
        """
        lines = await self._probe(None, "off")
        self.assertEqual(
            lines,
            [
                "reactor EPollReactor",
                "send_now write_plain",
                "log send_now falls back to transport.write: BALANCEBEAM_TWISTED_INTERNALS=off",
                "log reactor balancebeam-epoll: BALANCEBEAM_TWISTED_INTERNALS=off; "
                "installing Twisted's stock epoll reactor",
            ],
        )


class PluginTests(SynchronousTestCase):
    """
    The reactor plugin points twistd at this module's install().
    """

    def test_plugin_names_the_module(self) -> None:
        """
        Twisted's plugin discovery finds the balancebeam-epoll reactor, which
        loads balancebeam.twisted_internals, whose install() twistd calls.
        """
        sys.path.insert(0, REPO_ROOT)
        self.addCleanup(sys.path.remove, REPO_ROOT)
        found = {
            installer.shortName: getattr(installer, "moduleName", None)
            for installer in getPlugins(IReactorInstaller)
        }
        self.assertEqual(found.get("balancebeam-epoll"), "balancebeam.twisted_internals")
        self.assertTrue(callable(twisted_internals.install))
