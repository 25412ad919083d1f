"""
How the balancer reaches its upstreams: L{UpstreamEndpoints}, a base of
L{balancebeam.service.BalancerService}, makes the client endpoint of each
upstream (an IP literal skips name resolution; a TLS upstream's endpoint
hands a connection over only once its certificate has been verified).

The pool's endpoints are kept, one per upstream, until a reload changes the
connect timeout (L{UpstreamEndpoints.forget_endpoints}); each health probe
gets a new one.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint

if TYPE_CHECKING:
    from balancebeam.config import BalancerConfig, UpstreamSpec
    from balancebeam.tls import UpstreamTLS


class UpstreamEndpoints:
    """
    The upstream endpoints of L{balancebeam.service.BalancerService}, which
    derives from it. It works on the attributes below, which the balancer
    makes when it is built.
    """

    config: BalancerConfig
    upstream_tls: UpstreamTLS | None
    _reactor: Any
    _endpoints: dict[UpstreamSpec, IStreamClientEndpoint]

    def forget_endpoints(self) -> None:
        """
        Build upstream endpoints anew (a reload changed the connect timeout).
        """
        self._endpoints.clear()

    def _endpoint_for(self, spec: UpstreamSpec) -> IStreamClientEndpoint:
        """
        The client endpoint for an upstream (IP literals skip name resolution).
        """
        endpoint = self._endpoints.get(spec)
        if endpoint is None:
            endpoint = self._make_endpoint(spec, self.config.timeouts.connect)
            self._endpoints[spec] = endpoint
        return endpoint

    def _probe_endpoint_for(self, spec: UpstreamSpec) -> IStreamClientEndpoint:
        return self._make_endpoint(spec, self.config.timeouts.connect)

    def _make_endpoint(self, spec: UpstreamSpec, timeout: float) -> IStreamClientEndpoint:
        """
        The endpoint that connects to C{spec}; for a TLS upstream, one whose
        connection is handed over only once the upstream's certificate has
        been verified (within the same C{timeout} as the TCP connect).
        """
        endpoint = self._tcp_endpoint(spec, timeout)
        if not spec.tls:
            return endpoint
        # balancebeam.features._load_tls builds it whenever the configuration has a TLS upstream.
        assert self.upstream_tls is not None, "a TLS upstream without upstream TLS"
        return self.upstream_tls.endpoint(self._reactor, spec.host, spec.port, endpoint, timeout)

    def _tcp_endpoint(self, spec: UpstreamSpec, timeout: float) -> IStreamClientEndpoint:
        try:
            address = ipaddress.ip_address(spec.host)
        except ValueError:
            return HostnameEndpoint(self._reactor, spec.host.encode("idna"), spec.port, timeout)
        if address.version == 6:
            return TCP6ClientEndpoint(self._reactor, spec.host, spec.port, timeout)
        return TCP4ClientEndpoint(self._reactor, spec.host, spec.port, timeout)
