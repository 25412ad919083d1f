"""
The interfaces between the relay's objects: what the upstream connection
reports to the exchange that owns it (L{IResponseSink}), and what an
exchange drives on the client side (L{IClientSide}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from balancebeam.http1.heads import HTTPError, ResponseHead
    from balancebeam.interfaces import IExchange
    from balancebeam.relay.upstream import UpstreamConnection


class IResponseSink(Interface):
    """
    What an L{UpstreamConnection} reports to the exchange whose request it
    carries. Every call happens while the connection handles an event; the
    sink then flushes what it wrote to its client (L{flush}).
    """

    def upstream_informational(response: ResponseHead) -> None:
        """An interim (1xx) response other than 101 arrived."""

    def upstream_head(connection: UpstreamConnection, response: ResponseHead) -> None:
        """The final response head arrived (101 included)."""

    def upstream_data(data: bytes) -> None:
        """A piece of response body (de-chunked), or tunnel bytes after a 101."""

    def upstream_complete(connection: UpstreamConnection, trailers: bytes) -> None:
        """
        The response body is complete; C{trailers} holds the trailer fields
        of a chunked body as received (C{b""} for none).
        """

    def upstream_failed(
        connection: UpstreamConnection, error: HTTPError | None, received_any: bool
    ) -> None:
        """The connection failed or closed before the response was complete."""

    def pause_request_body() -> None:
        """The upstream's send buffer is full: stop reading the client."""

    def resume_request_body() -> None:
        """The upstream's send buffer has drained."""

    def flush() -> None:
        """Send what was written to the client while handling upstream bytes."""


class IClientSide(Interface):
    """
    The client end of an exchange: a client connection, or nothing at all
    once the client has gone and an observer keeps the response coming.
    """

    client_ip: str = Attribute("The peer's address in normal form, or C{'-'}.")
    scheme: bytes = Attribute("C{b'http'} or C{b'https'}.")
    deadline: float = Attribute(
        "Clock time at which the relay's deadline timer calls L{deadline_passed} "
        "on the owner of this side (C{inf} for none); the exchange sets it."
    )
    writes_paused: bool = Attribute("Whether the client's send buffer is full.")

    def write(data: bytes) -> None:
        """Queue C{data} for the client; L{flush} sends it."""

    def flush() -> None:
        """Send everything queued, in one system call where possible."""

    def pause_reading(reason: int) -> None:
        """Stop reading the client for C{reason} (a bit of C{PAUSE_*})."""

    def resume_reading(reason: int) -> None:
        """Clear C{reason}; read again once no reason is left."""

    def start_tunnel() -> None:
        """The exchange became a tunnel: hand it every further client byte."""

    def exchange_done(exchange: IExchange, keep_alive: bool) -> None:
        """
        The exchange is over: go on with the next request, or close once the
        queued bytes are sent when C{keep_alive} is false.
        """

    def abort() -> None:
        """Drop the client at once (a response cannot be completed honestly)."""

    def close() -> None:
        """Close once the queued bytes are sent."""
