"""
The server TLS layer's own CPU per keep-alive request, without sockets.

A balancebeam TLS server protocol on an in-memory transport, after a real
handshake with a pyOpenSSL client: each request is one encrypted record in
(decrypted and handed to a trivial application), one response out (encrypted
and written below). The records are made before the clock starts, so only
the server side is measured. Compares Twisted's protocol
(C{TwistedTLSProtocol}) with the fast path (C{FastTLSProtocol}), in
alternating rounds, and prints the ratio.

    PYTHONPATH=. python3 bench/tls_layer.py [--requests N] [--rounds R] [--body BYTES]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import trustme
from OpenSSL import SSL
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from balancebeam.tls.fast import FastTLSProtocol, TwistedTLSProtocol
from balancebeam.tls.layer import DirectTLSFactory
from balancebeam.tls.store import CertificateStore

REQUEST = b"GET / HTTP/1.1\r\nHost: example.test\r\nUser-Agent: wrk\r\n\r\n"


def response(body_size: int) -> bytes:
    """A keep-alive response with a body of C{body_size} bytes."""
    head = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: %d\r\n\r\n" % body_size
    return head + b"x" * body_size


class Answer(Protocol):
    """Answers every read with the same response."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(self.answer)


def certificate_files(directory: str) -> tuple[str, str]:
    """A CA file and a server bundle (certificate, chain, key) for example.test."""
    ca = trustme.CA()
    leaf = ca.issue_cert("example.test")
    bundle_path = f"{directory}/site.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(bundle_path)
    ca_path = f"{directory}/ca.pem"
    ca.cert_pem.write_to_path(ca_path)
    return ca_path, bundle_path


def measure(protocol: type, requests: int, answer: bytes, files: tuple[str, str]) -> float:
    """Microseconds of process CPU per request for C{protocol}."""
    ca_path, bundle_path = files
    store = CertificateStore(Clock(), [bundle_path])
    factory = DirectTLSFactory(store, False, Factory.forProtocol(lambda: Answer(answer)))
    factory.protocol = protocol
    below = StringTransport()
    server = factory.buildProtocol(None)
    assert type(server) is protocol
    server.makeConnection(below)
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_verify(SSL.VERIFY_PEER)
    context.load_verify_locations(ca_path)
    client = SSL.Connection(context, None)
    client.set_tlsext_host_name(b"example.test")
    client.set_connect_state()
    for _ in range(10):
        try:
            client.do_handshake()
        except SSL.WantReadError:
            pass
        try:
            server.dataReceived(client.bio_read(1 << 20))
        except SSL.WantReadError:
            pass
        if below.value():
            client.bio_write(below.value())
            below.clear()
    records = []
    for _ in range(requests):
        client.sendall(REQUEST)
        records.append(client.bio_read(1 << 20))
    received = server.dataReceived
    start = time.process_time()
    for record in records:
        received(record)
        below.clear()
    return (time.process_time() - start) / requests * 1e6


def main() -> None:
    """Run the comparison and print it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--body", type=int, default=100, help="response body bytes")
    options = parser.parse_args()
    answer = response(options.body)
    with tempfile.TemporaryDirectory() as directory:
        files = certificate_files(directory)
        results: dict[str, list[float]] = {"twisted": [], "fast": []}
        for _ in range(options.rounds):
            results["twisted"].append(measure(TwistedTLSProtocol, options.requests, answer, files))
            results["fast"].append(measure(FastTLSProtocol, options.requests, answer, files))
    twisted_us = statistics.median(results["twisted"])
    fast_us = statistics.median(results["fast"])
    print(
        f"TLS layer, {options.requests} requests x {options.rounds} rounds, "
        f"{len(answer)}-byte responses (median us/request):"
    )
    print(f"  TwistedTLSProtocol  {twisted_us:6.2f}")
    print(f"  FastTLSProtocol     {fast_us:6.2f}   ratio {fast_us / twisted_us:.2f}")


if __name__ == "__main__":
    main()
