"""
Building the balancer's optional features from its configuration: the
response cache, the web application firewall, and the TLS material (the
listeners' certificate store, what TLS upstreams' connections share).

Each feature's package is imported only when the feature is on (the
firewall loads ModSecurity, TLS loads pyOpenSSL). A feature that cannot be
built stops startup with a L{StartupError} naming the flag.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from balancebeam.config import BalancerConfig, TlsConfig
from balancebeam.errors import StartupError

if TYPE_CHECKING:
    from balancebeam.cache import CacheCounters, CacheFilter
    from balancebeam.relay.settings import RelaySettings
    from balancebeam.tls import CertificateStore, UpstreamTLS
    from balancebeam.waf.build import WafService


def build_cache_filter(
    reactor: Any,
    config: BalancerConfig,
    settings: Callable[[], RelaySettings],
    counters: CacheCounters | None = None,
) -> CacheFilter:
    """
    The response cache, revalidating in the background on the relay's
    current settings.
    """
    from balancebeam.cache import CacheFilter
    from balancebeam.relay.background import BackgroundFetcher

    return CacheFilter(
        reactor,
        config.cache.size,
        config.cache.max_object_size,
        config.cache.lock_timeout,
        counters=counters,
        background=BackgroundFetcher(settings),
        store_set_cookie=config.cache.store_set_cookie,
    )


def _load_tls(
    reactor: Any, config: BalancerConfig
) -> tuple[CertificateStore | None, UpstreamTLS | None]:
    """
    Load the listeners' certificates (with C{--tls-cert}) and the upstreams'
    trust anchors and client certificate (with an C{https://} upstream).

    L{balancebeam.tls} (and so pyOpenSSL) is imported only then.

    @raise StartupError: naming the flag and the file, when one cannot be
        used (unreadable, bad PEM, a key that does not match, no
        certificate at all).
    """
    tls = config.tls
    needs_upstream_tls = any(spec.tls for spec in config.upstreams)
    if not tls.serving and not needs_upstream_tls:
        return None, None
    from balancebeam.tls import CertificateError, CertificateStore, UpstreamTLS

    store: CertificateStore | None = None
    upstream_tls: UpstreamTLS | None = None
    try:
        if tls.serving:
            store = CertificateStore(reactor, tls.certificates, tls.certificate_dirs)
        if needs_upstream_tls:
            upstream_tls = UpstreamTLS(
                ca_file=tls.upstream_ca,
                verify=tls.upstream_verify != "none",
                server_name=tls.upstream_name,
                client_certificate_file=tls.upstream_client_cert,
            )
    except CertificateError as error:
        raise StartupError(f"{_tls_flag(tls, error.path)} {error}") from None
    return store, upstream_tls


def _tls_flag(tls: TlsConfig, path: str) -> str:
    """
    The flag that named C{path}, for a startup error about it.
    """
    if path == tls.upstream_ca:
        return "--upstream-ca"
    if path == tls.upstream_client_cert:
        return "--upstream-client-cert"
    if path in tls.certificates:
        return "--tls-cert"
    return "--tls-cert-dir"


def build_waf_service(reactor: Any, config: BalancerConfig) -> WafService:
    """
    Load the firewall's rules and start its engine.

    @raise StartupError: when the rules fail to load, with the engine's
        message and the file.
    """
    # Imported only when the firewall is on: it loads ModSecurity.
    from balancebeam.waf.build import build_waf

    try:
        return build_waf(reactor, config.waf)
    except ValueError as error:
        raise StartupError(f"--waf: {error}") from None
