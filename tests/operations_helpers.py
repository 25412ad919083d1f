"""
Fakes for the operations tests (issue 13): a whole L{BalancerService} on a
L{MemoryReactorClock}, with clients and upstreams in memory and an HTTP
client for its admin listener.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IProtocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from balancebeam.admin.resources import AdminSite
from balancebeam.config import BalancerConfig, UpstreamSpec
from balancebeam.relay.client import ClientConnection
from balancebeam.service import BalancerService
from balancebeam.systemd import Notifier

UPSTREAM_BASE_PORT = 9001


def specs(count: int, base: int = UPSTREAM_BASE_PORT) -> tuple[UpstreamSpec, ...]:
    """
    C{count} upstreams on 127.0.0.1, ports C{base}, C{base + 1}, ...
    """
    return tuple(UpstreamSpec("127.0.0.1", base + i) for i in range(count))


def harness_config(upstreams: int = 2, **fields: Any) -> BalancerConfig:
    """
    A configuration for L{ServiceHarness}: round robin, active checks off,
    listening on port 8080 of the memory reactor.
    """
    fields.setdefault("active_health_check_interval", 0.0)
    fields.setdefault("strategy", "round-robin")
    fields.setdefault("listen", ("tcp:8080:interface=127.0.0.1",))
    return BalancerConfig(upstreams=specs(upstreams), **fields)


class RecordingNotifier(Notifier):
    """
    A systemd notifier that records the messages instead of sending them.

    @ivar messages: each message, as its lines.
    """

    def __init__(self) -> None:
        super().__init__("/nonexistent/recorded", monotonic=lambda: 123456)
        self.messages: list[list[str]] = []

    def notify(self, *lines: str) -> bool:
        """
        Record C{lines}.
        """
        self.messages.append(list(lines))
        return True


class AdminResponse:
    """
    A response from the admin listener.
    """

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.status = int(lines[0].split(b" ")[1])
        self.headers: list[tuple[bytes, bytes]] = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            self.headers.append((name.strip().lower(), value.strip()))

    def header(self, name: bytes) -> bytes | None:
        """
        The first value of header C{name}, or C{None}.
        """
        values = self.values(name)
        return values[0] if values else None

    def values(self, name: bytes) -> list[bytes]:
        """
        Every value of header C{name}.
        """
        return [value for key, value in self.headers if key == name.lower()]


def parse_metrics(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """
    Parse a Prometheus exposition back with C{prometheus_client.parser}.

    @return: each sample's value by its name and sorted labels.
    """
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text.decode("utf-8")):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """
    One sample's value.

    @raise KeyError: naming it when it is missing.
    """
    key = (name, tuple(sorted(labels.items())))
    if key not in samples:
        raise KeyError(f"no sample {name}{labels}")
    return samples[key]


class ServiceHarness:
    """
    A started L{BalancerService} on a memory reactor.

    @ivar reactor: the memory reactor (and clock).
    @ivar service: the balancer.
    @ivar notifier: records systemd notifications.
    """

    def __init__(self, config: BalancerConfig | None = None, start: bool = True) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1000.0)
        self.config = config if config is not None else harness_config()
        self.service = BalancerService(self.config, self.reactor)
        self.notifier = RecordingNotifier()
        self.service.systemd.notifier = self.notifier
        self._handled = 0
        if start:
            self.start()

    def start(self) -> None:
        """
        Listen and start the service tree.
        """
        self.service.privilegedStartService()
        self.service.startService()

    def client(self, port: int = 40000) -> tuple[ClientConnection, StringTransport]:
        """
        A client connection and its transport.
        """
        protocol = self.service.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
        assert isinstance(protocol, ClientConnection)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
        protocol.makeConnection(transport)
        return protocol, transport

    def get(self, client: ClientConnection, path: bytes = b"/") -> None:
        """
        Send one keep-alive GET on C{client}.
        """
        client.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: test\r\n\r\n")

    def pending_ports(self) -> list[int]:
        """
        The upstream ports of the connection attempts not yet handled.
        """
        self._skip_cancelled()
        return [entry[1] for entry in self.reactor.tcpClients[self._handled :]]

    def _skip_cancelled(self) -> None:
        connectors = self.reactor.connectors
        while self._handled < len(connectors) and connectors[self._handled].stoppedConnecting:
            self._handled += 1

    def accept(self) -> tuple[IProtocol, StringTransport, int]:
        """
        Accept the oldest pending upstream connection attempt.

        @return: the upstream-side protocol, its transport, and the port.
        """
        self._skip_cancelled()
        host, port, factory, _, _ = self.reactor.tcpClients[self._handled]
        self._handled += 1
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        assert protocol is not None
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
        protocol.makeConnection(transport)
        return protocol, transport, port

    def refuse(self) -> int:
        """
        Refuse the oldest pending upstream connection attempt.

        @return: its port.
        """
        from twisted.internet.error import ConnectionRefusedError

        self._skip_cancelled()
        _, port, factory, _, _ = self.reactor.tcpClients[self._handled]
        connector = self.reactor.connectors[self._handled]
        self._handled += 1
        factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
        return port

    def admin_site(self) -> AdminSite:
        """
        The admin listener's site.
        """
        for _, factory, _, _ in self.reactor.tcpServers:
            if isinstance(factory, AdminSite):
                return factory
        raise AssertionError("no admin listener")

    def admin(
        self,
        path: str,
        method: bytes = b"GET",
        headers: Sequence[tuple[bytes, bytes]] = (),
        site: AdminSite | None = None,
        host: bytes | None = b"127.0.0.1:9100",
    ) -> AdminResponse:
        """
        One request to the admin listener, through its HTTP channel.

        @param host: its C{Host}, or C{None} for none.
        """
        site = site if site is not None else self.admin_site()
        address = IPv4Address("TCP", "127.0.0.1", 50000)
        channel = site.buildProtocol(address)
        assert channel is not None
        transport = StringTransport(
            peerAddress=address, hostAddress=IPv4Address("TCP", "127.0.0.1", 9100)
        )
        channel.makeConnection(transport)
        lines = [method + b" " + path.encode("ascii") + b" HTTP/1.1"]
        lines += [b"Host: " + host] if host is not None else []
        lines += [name + b": " + value for name, value in headers]
        lines += [b"Connection: close", b"Content-Length: 0"]
        channel.dataReceived(b"\r\n".join(lines) + b"\r\n\r\n")
        raw = transport.value()
        channel.connectionLost(Failure(ConnectionError("done")))
        return AdminResponse(raw)

    def reconfigured(self, **fields: Any) -> BalancerConfig:
        """
        The current configuration with C{fields} changed.
        """
        return dataclasses.replace(self.service.config, **fields)
