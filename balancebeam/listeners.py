"""
The balancer's listeners: one L{ListenerService} per listening endpoint,
each endpoint wrapped to log where it listens, hand the port to the
balancer, and turn a failure to listen into one clear L{ListenFailed}.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer


class ListenFailed(Exception):
    """
    A listener could not be started (address in use, permission denied, ...).
    """


@implementer(IStreamServerEndpoint)
class _ReportingEndpoint:
    """
    Wraps a server endpoint to log where it listens, remember the port, and
    report a failure to listen with one clear line.
    """

    log = Logger()

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        description: str,
        listening: Callable[[IListeningPort], None],
        tls: bool = False,
    ) -> None:
        self._endpoint = endpoint
        self._description = description
        self._listening = listening
        self._tls = tls

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        """
        Listen with the wrapped endpoint.
        """
        listening: Deferred[IListeningPort] = self._endpoint.listen(factory)
        return listening.addCallbacks(self._listened, self._failed)

    def _listened(self, port: IListeningPort) -> IListeningPort:
        if self._tls:
            self.log.info(
                "Listening for requests on {address} (HTTPS)", address=describe_port(port)
            )
        else:
            self.log.info("Listening for requests on {address}", address=describe_port(port))
        self._listening(port)
        return port

    def _failed(self, failure: Failure) -> Failure:
        failure.value = ListenFailed(
            f"cannot listen on {self._description}: {failure.getErrorMessage()}"
        )
        return failure


class ListenerService(StreamServerEndpointService):
    """
    One listener. A failure to listen that is known at once (an address in
    use) is raised from C{privilegedStartService}, as Twisted's own
    C{strports.service} arranges, so that startup fails cleanly.
    """

    _raiseSynchronously = True


class _AdminEndpoint(_ReportingEndpoint):
    """
    The admin listener's endpoint: logs where the admin listens.
    """

    def _listened(self, port: IListeningPort) -> IListeningPort:
        self.log.info("Admin listening on {address}", address=describe_port(port))
        self._listening(port)
        return port


def describe_port(port: IListeningPort) -> str:
    """
    C{host:port} (IPv6 in brackets) of a listening port, for logs.
    """
    address = port.getHost()
    host = getattr(address, "host", None)
    port_number = getattr(address, "port", None)
    if host is not None and port_number is not None:
        return f"{host}:{port_number}" if ":" not in host else f"[{host}]:{port_number}"
    return str(address)
