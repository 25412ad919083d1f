# -*- test-case-name: tests.test_workers_sockets -*-
"""
The listening sockets of a master and its workers.

The master turns each C{--bind}/C{--listen} endpoint description into a
L{ListenerSpec} (L{inspect_listener}): Twisted's own endpoint parser builds
the endpoint, and a recording stand-in for the reactor learns what it would
listen on (address, backlog, TLS context) without listening. The master then
binds the socket itself (L{bind_listener}), or takes the one systemd passed,
and never accepts on it: the workers do, each with its own descriptor for
the same socket. So the connections waiting in the socket's queue belong to
no worker, and a worker that stops accepting leaves them to the others.

With C{--reuse-port} the master binds one C{SO_REUSEPORT} socket per worker
slot instead, and the kernel spreads connections over them; a slot's socket
outlives its workers (a replacement and a new generation take it over), so
connections queued on it are not dropped when its worker is replaced.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IProtocolFactory


class ListenFailed(Exception):
    """
    A listening socket could not be bound; the message names the endpoint,
    as a single process says it (C{cannot listen on tcp:80: Couldn't listen
    on ...: [Errno 98] Address already in use.}).
    """


class UnsupportedListener(ValueError):
    """
    An endpoint a master cannot share with its workers (a unix socket, an
    endpoint type it does not know).
    """


@dataclass(frozen=True)
class ListenerSpec:
    """
    What one listener endpoint listens on.

    @ivar description: the endpoint as configured (C{tcp:1100:interface=::}).
    @ivar family: C{AF_INET} or C{AF_INET6}.
    @ivar host: the address to bind, or C{None} for a socket passed by systemd.
    @ivar port: the TCP port to bind (0: any), or C{None} for systemd's.
    @ivar backlog: the listen queue's length.
    @ivar inherited_fd: the descriptor systemd passed, or C{None}.
    @ivar tls: the context factory of an C{ssl:} endpoint, else C{None};
        each worker builds its own from C{description}.
    @ivar https: whether it is an HTTPS listener (C{--tls-bind}), whose
        TLS each worker adds from its certificate store.
    """

    description: str
    family: int
    host: str | None = None
    port: int | None = None
    backlog: int = 50
    inherited_fd: int | None = None
    tls: Any = None
    https: bool = False


class _Recorded(Exception):
    """
    Raised by L{_RecordingReactor} to stop an endpoint from listening, with
    what it asked for.
    """

    def __init__(self, method: str, arguments: dict[str, Any]) -> None:
        super().__init__(method)
        self.method = method
        self.arguments = arguments


class _RecordingReactor:
    """
    Stands in for the reactor while an endpoint's C{listen} runs, and stops
    it by raising L{_Recorded} with the arguments of the first call, before
    anything is bound or closed (an adopted systemd descriptor included).
    """

    def listenTCP(  # noqa: N802 (Twisted's name)
        self, port: int, factory: IProtocolFactory, backlog: int = 50, interface: str = ""
    ) -> None:
        """Record a TCP listener."""
        raise _Recorded("tcp", {"port": port, "backlog": backlog, "interface": interface})

    def listenSSL(  # noqa: N802 (Twisted's name)
        self,
        port: int,
        factory: IProtocolFactory,
        contextFactory: Any,  # noqa: N803 (Twisted's name)
        backlog: int = 50,
        interface: str = "",
    ) -> None:
        """Record a TLS listener."""
        raise _Recorded(
            "ssl",
            {"port": port, "backlog": backlog, "interface": interface, "tls": contextFactory},
        )

    def listenUNIX(self, address: Any, factory: IProtocolFactory, *a: Any, **k: Any) -> None:  # noqa: N802
        """Record a unix socket listener."""
        raise _Recorded("unix", {"address": address})

    def adoptStreamPort(  # noqa: N802 (Twisted's name)
        self, fileDescriptor: int, addressFamily: int, factory: IProtocolFactory  # noqa: N803
    ) -> None:
        """Record a socket passed by systemd."""
        raise _Recorded("adopt", {"fd": fileDescriptor, "family": addressFamily})


class _NoFactory:
    """
    The factory handed to an endpoint under inspection; never used.
    """


def inspect_listener(description: str) -> ListenerSpec:
    """
    Find out what an endpoint description listens on, without listening.

    An C{ssl:} endpoint loads its certificate and key here; a C{systemd:}
    endpoint needs the descriptors systemd passed (C{LISTEN_FDS}).

    @raise UnsupportedListener: for a unix socket or an endpoint type
        whose listening this does not understand.
    @raise ValueError: when Twisted cannot parse C{description}.
    """
    endpoint = serverFromString(_RecordingReactor(), description)
    outcome: list[Any] = []
    endpoint.listen(_NoFactory()).addBoth(outcome.append)
    failure = outcome[0] if outcome else None
    recorded = getattr(failure, "value", None)
    if not isinstance(recorded, _Recorded):
        if failure is not None and hasattr(failure, "value"):
            raise UnsupportedListener(
                f"cannot share {description!r} with workers: {failure.value}"
            )
        raise UnsupportedListener(f"cannot share {description!r} with workers")
    arguments = recorded.arguments
    if recorded.method == "adopt":
        family = arguments["family"]
        if family not in (socket.AF_INET, socket.AF_INET6):
            raise UnsupportedListener(
                f"cannot share {description!r} with workers: only TCP sockets can be shared"
            )
        return ListenerSpec(description, family, inherited_fd=arguments["fd"])
    if recorded.method == "unix":
        raise UnsupportedListener(
            f"cannot share the unix socket {description!r} with workers"
        )
    interface = arguments["interface"] or "0.0.0.0"
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    return ListenerSpec(
        description,
        family,
        host=interface,
        port=arguments["port"],
        backlog=arguments["backlog"],
        tls=arguments.get("tls"),
    )


def bind_listener(
    spec: ListenerSpec, reuse_port: bool = False, port: int | None = None
) -> socket.socket:
    """
    Open the listening socket of C{spec}: bind and listen (with
    C{SO_REUSEADDR}, as Twisted does, and C{SO_REUSEPORT} when asked), or
    wrap the descriptor systemd passed. The socket is non-blocking, as
    C{adoptStreamPort} requires, and not inherited by children unless they
    are given it (C{childFDs}).

    @param port: bind this port instead of C{spec.port} (the port chosen
        for the first of several C{SO_REUSEPORT} sockets of a port-0 spec).
    @raise OSError: when binding fails (the address is in use, ...).
    """
    if spec.inherited_fd is not None:
        listener = socket.socket(spec.family, socket.SOCK_STREAM, fileno=spec.inherited_fd)
    else:
        listener = socket.socket(spec.family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            assert spec.host is not None and spec.port is not None
            listener.bind((spec.host, spec.port if port is None else port))
            listener.listen(spec.backlog)
        except BaseException:
            listener.close()
            raise
    listener.setblocking(False)
    os.set_inheritable(listener.fileno(), False)
    return listener


def describe_socket(listener: socket.socket) -> str:
    """
    C{host:port} (IPv6 in brackets) of a bound socket, for logs.
    """
    address = listener.getsockname()
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
