# -*- test-case-name: tests.test_reload -*-
"""
Applying a new configuration to a running balancer, without dropping a
connection or a request (C{SIGHUP}), and checking one without starting
anything (C{--check-config}).

L{Reloader.reload} reads the configuration again (the file, then the
command line over it), and either applies all of it or, when anything is
invalid, nothing: every step that can fail (reading the file, the admin
token, building a rate limiter, a strategy, a health checker, and the
features' own L{ReloadStep}s) runs before anything changes.

What changes, and how:

  - upstreams: added ones join at once; removed ones take no new request,
    their requests in flight finish, and the pool closes their connections
    as they come back; they are forgotten once nothing uses them;
  - weights and the strategy: for the next choice;
  - health checks: the checker's loop restarts with the new settings
    (interval, timeout, rise, fall, path), or starts or stops;
  - rate limiting: a new limiter and filter for new requests (only when its
    settings changed, so that counts survive a reload that does not touch
    them); the old limiter is closed once no request still waits on it;
  - timeouts, limits, the access log, the connection limits (in all and
    per client): new requests and connections take them
    (L{balancebeam.relay.factory.RelayFactory.reconfigure},
    L{balancebeam.relay.factory.RelayFactory.limit_connections_per_client});
    requests in flight finish on the settings they started with;
  - pool settings: in place (L{balancebeam.pool.UpstreamPool.reconfigure});
  - the admin token: re-read from its file.

Listener addresses (C{bind}, C{listen}, C{admin-bind}, the C{--tls-*}
listener settings), C{listen-backlog} and the process model (C{--workers},
C{--reuse-port}) cannot change: the reload applies the rest and logs that a
restart is needed. The firewall and the cache are rebuilt when their settings change
(L{balancebeam.reload_features}); certificates are read again on every
C{SIGHUP}.
"""

from __future__ import annotations

import dataclasses
import random
import signal
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from twisted.application.service import IService, MultiService
from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from balancebeam.admin.auth import read_token_file
from balancebeam.config import BalancerConfig, UpstreamSpec
from balancebeam.interfaces import IRateLimiter, IRequestFilter
from balancebeam.ratelimit.build import build_rate_limiting
from balancebeam.ratelimit.filter import RateLimitFilter
from balancebeam.relay.deadlines import DeadlineTimer, resolution_for
from balancebeam.relay.states import ExchangeState
from balancebeam.strategies import build_strategy

if TYPE_CHECKING:
    from balancebeam.health.checker import HealthChecker
    from balancebeam.service import BalancerService

ReloadStep = Callable[[BalancerConfig, BalancerConfig], "Callable[[], None] | None"]
"""
A feature's part of a reload (the cache, the firewall, TLS certificates):
called with the old and the new configuration before anything changes, it
checks and prepares (raising C{ValueError} refuses the whole reload), and
returns what to do to apply it (or C{None} for nothing). Add one to
C{BalancerService.reload_steps}. A step whose feature is a request filter
replaces it in C{service.filters} when applied; the relay then takes the new
filter list for new requests.
"""

RESTART_FIELDS: tuple[str, ...] = (
    "listen",
    "admin_bind",
    "tls",
    "listen_backlog",
    "workers",
    "reuse_port",
)
"""
Fields a reload cannot change: the listeners (plain, admin and HTTPS with
their certificate files; the certificates' contents do reload; the listen
queue's length), and the process model.
"""

RATE_LIMIT_FIELDS: tuple[str, ...] = (
    "max_requests_per_minute",
    "rate_limit_window",
    "rate_limit_algorithm",
    "rate_limit_backend",
    "rate_limit_headers",
    "rate_limit_redis_timeout",
    "rate_limit_on_error",
    "rate_limit_max_keys",
    "trusted_proxies",
)
"""Fields whose change builds a new rate limiter."""

HEALTH_FIELDS: tuple[str, ...] = (
    "active_health_check_interval",
    "active_health_check_path",
    "health_check_timeout",
    "health_check_rise",
    "health_check_fall",
)
"""Fields whose change restarts the health checker."""

POOL_FIELDS: tuple[str, ...] = (
    "pool_max_idle_per_upstream",
    "pool_idle_timeout",
    "pool_max_requests_per_connection",
    "pool_max_connections_per_upstream",
    "pool_warm",
    "queue_timeout",
)
"""Fields the pool takes in place."""


def _changed(old: BalancerConfig, new: BalancerConfig, fields: tuple[str, ...]) -> bool:
    return any(getattr(old, name) != getattr(new, name) for name in fields)


def _retry_after(config: BalancerConfig) -> int:
    """
    The C{Retry-After} of a 503, as C{BalancerService} computes it.
    """
    return max(1, round(config.active_health_check_interval or config.passive_retry_interval))


def replace_child(
    parent: MultiService, old: IService | None, new: IService | None, where: IService
) -> None:
    """
    Put C{new} in C{parent}'s children where C{old} is (or just before
    C{where} when there is no C{old}), so that the tree still starts and
    stops in order; stop C{old}, start C{new} when C{parent} runs.
    """
    index = parent.services.index(old if old is not None else where)
    if old is not None:
        stopping = parent.removeService(old)
        if stopping is not None:
            maybeDeferred(lambda: stopping).addErrback(
                lambda f: Logger().failure("stopping {service} failed", f, service=old.name)
            )
    if new is not None:
        new.setServiceParent(parent)
        parent.services.remove(new)
        parent.services.insert(index, new)


class Reloader:
    """
    Reloads a running L{BalancerService}.

    @ivar retire_interval: seconds between two looks at what a reload
        retired (removed upstreams, old rate limiters).
    """

    log = Logger()

    def __init__(
        self,
        service: BalancerService,
        load: Callable[[], BalancerConfig],
        clock: IReactorTime,
        retire_interval: float = 0.5,
    ) -> None:
        """
        @param load: reads the configuration anew; raises C{ValueError}
            (L{balancebeam.configfile.ConfigFileError},
            L{balancebeam.config.ConfigError}) when it is invalid.
        """
        self._service = service
        self._load = load
        self._clock = clock
        self.retire_interval = retire_interval
        self._retiring_limiters: list[tuple[IRateLimiter, IRequestFilter | None]] = []
        self._retirement: LoopingCall | None = None
        service.reloader = self

    def reload(self) -> bool:
        """
        Read the configuration and apply it whole, or nothing of it.

        @return: whether it was applied.
        """
        service = self._service
        notifier = service.systemd.notifier
        reloads = service.reloads
        if service.factory.draining:
            self.log.info("reload requested while stopping: ignored")
            return False
        notifier.reloading()
        reloads.last_at = self._clock.seconds()
        try:
            config = self._load()
            apply = self.prepare(config)
        except ValueError as e:
            return self._failed(str(e))
        except Exception:
            self.log.failure("reloading the configuration failed")
            return self._failed("unexpected error (see the log)")
        try:
            apply()
        except Exception:
            self.log.failure("applying the new configuration failed half-way")
            return self._failed("unexpected error while applying (see the log)")
        reloads.success += 1
        reloads.last_ok = True
        reloads.last_error = None
        reloads.last_success_at = reloads.last_at
        self.log.info(
            "configuration reloaded: {count} upstream(s): {upstreams}",
            count=len(service.registry.upstreams),
            upstreams=", ".join(u.name for u in service.registry.upstreams),
        )
        notifier.ready(f"reloaded; {service.summary()}")
        return True

    def _failed(self, reason: str) -> bool:
        service = self._service
        reloads = service.reloads
        reloads.failure += 1
        reloads.last_ok = False
        reloads.last_error = reason
        self.log.error(
            "configuration not reloaded, nothing changed: {reason}", reason=reason
        )
        service.systemd.notifier.ready(f"reload failed: {reason}; {service.summary()}")
        return False

    def prepare(self, new: BalancerConfig) -> Callable[[], None]:
        """
        Check and build everything C{new} needs, changing nothing.

        @return: what applies it.
        @raise ValueError: when it cannot be applied (nothing changed).
        """
        service = self._service
        old = service.config
        for name in RESTART_FIELDS:
            if getattr(old, name) != getattr(new, name):
                self.log.warn(
                    "{field} changed from {old} to {new}: a reload cannot change "
                    "it; restart the balancer to apply it",
                    field=name.replace("_", "-"),
                    old=getattr(old, name),
                    new=getattr(new, name),
                )
        new = dataclasses.replace(
            new, **{name: getattr(old, name) for name in RESTART_FIELDS}
        )
        token: str | None = None
        if service.admin_token is not None:
            if new.admin_token_file is None:
                new = dataclasses.replace(new, admin_token_file=old.admin_token_file)
            if new.admin_token_file is not None:
                token = read_token_file(new.admin_token_file)
        limiter: IRateLimiter | None = None
        limit_filter: IRequestFilter | None = None
        new_limiter = _changed(old, new, RATE_LIMIT_FIELDS)
        if new_limiter:
            limiter, limit_filter = build_rate_limiting(self._clock, new, service.stats)
        strategy = None
        if old.strategy != new.strategy or old.random_seed != new.random_seed:
            strategy = build_strategy(new.strategy, random.Random(new.random_seed))
        new_checker = _changed(old, new, HEALTH_FIELDS)
        checker = service.build_health_checker(new) if new_checker else None
        steps = [step(old, new) for step in service.reload_steps]

        def apply() -> None:
            self._apply_upstreams(new)
            if _changed(old, new, POOL_FIELDS):
                service.pool.reconfigure(
                    max_idle_per_upstream=new.pool_max_idle_per_upstream,
                    idle_timeout=new.pool_idle_timeout,
                    max_requests_per_connection=new.pool_max_requests_per_connection,
                    max_connections_per_upstream=new.pool_max_connections_per_upstream,
                    queue_timeout=new.queue_timeout,
                    warm=new.pool_warm,
                    upstreams=service.registry.upstreams,
                )
            if old.timeouts.connect != new.timeouts.connect:
                service.forget_endpoints()
            active = new.active_health_check_interval > 0
            service.dispatcher.reconfigure(
                strategy,
                passive_retry_interval=None if active else new.passive_retry_interval,
                retry_after=_retry_after(new),
            )
            if new_checker:
                self._replace_health(checker)
            if new_limiter:
                self._replace_limiter(limiter, limit_filter)
            if token is not None and service.admin_token is not None:
                service.admin_token.replace(token)
            for step in steps:
                if step is not None:
                    step()
            service.config = new
            factories = service.relay_factories
            for factory in factories:
                factory.reconfigure(
                    service.dispatcher, new.timeouts, new.limits, service.filters, new.access_log
                )
                factory.max_connections = new.max_client_connections
                factory.limit_connections_per_client(new.max_connections_per_client)
                factory.retry_after = _retry_after(new)
            if resolution_for(old.timeouts) != resolution_for(new.timeouts):
                old_timer = service.getServiceNamed("deadlines")
                timer = DeadlineTimer(self._clock, factories, resolution_for(new.timeouts))
                timer.setName("deadlines")
                replace_child(service, old_timer, timer, old_timer)
            self._start_retirement()

        return apply

    def _apply_upstreams(self, new: BalancerConfig) -> None:
        """
        Add the new upstreams, remove the old ones, and set the weights.
        """
        registry = self._service.registry
        wanted = {spec.name for spec in new.upstreams}
        for upstream in list(registry.upstreams):
            if upstream.name not in wanted:
                registry.remove(upstream)
        for spec in new.upstreams:
            existing = registry.get(spec.name)
            if existing is None:
                registry.add(spec)
            else:
                registry.set_weight(existing, spec.weight)

    def _replace_health(self, checker: HealthChecker | None) -> None:
        """
        Stop the health checker (cancelling its probes) and start C{checker}
        in its place.
        """
        service = self._service
        old = service.health
        replace_child(service, old, checker, service.getServiceNamed("deadlines"))
        if old is not None:
            old.detach()
        service.health = checker

    def _replace_limiter(
        self, limiter: IRateLimiter | None, limit_filter: IRequestFilter | None
    ) -> None:
        """
        Use C{limiter} and its filter for new requests; retire the old ones.
        """
        service = self._service
        old_limiter = service.rate_limiter
        old_filter = next((f for f in service.filters if isinstance(f, RateLimitFilter)), None)
        filters = [f for f in service.filters if f is not old_filter]
        if limit_filter is not None:
            filters.insert(0, limit_filter)
        service.filters = tuple(filters)
        service.rate_limiter = limiter
        if limiter is not None:
            limiter.start()
        if old_limiter is not None:
            service.retired_limiters.append(old_limiter)
            self._retiring_limiters.append((old_limiter, old_filter))

    def _start_retirement(self) -> None:
        if self._retirement is None and (
            self._service.registry.retiring or self._retiring_limiters
        ):
            loop = LoopingCall(self.retire)
            loop.clock = self._clock
            self._retirement = loop
            loop.start(self.retire_interval, now=True).addErrback(
                lambda f: self.log.failure("retiring failed", f)
            )

    def retire(self) -> None:
        """
        Forget removed upstreams nothing uses any more, and close old rate
        limiters no request waits on; stop looking once all are gone.
        """
        service = self._service
        registry = service.registry
        for upstream in list(registry.retiring):
            if upstream.in_flight == 0 and service.pool.forget(upstream):
                registry.forget(upstream)
                self.log.info("upstream {upstream} drained and removed", upstream=upstream.name)
        for entry in list(self._retiring_limiters):
            limiter, limit_filter = entry
            if limit_filter is not None and self._filtering_with(limit_filter):
                continue
            self._retiring_limiters.remove(entry)
            if limiter in service.retired_limiters:
                service.retired_limiters.remove(limiter)
            maybeDeferred(limiter.close).addErrback(self._close_failed)
        if not registry.retiring and not self._retiring_limiters and self._retirement is not None:
            loop, self._retirement = self._retirement, None
            if loop.running:
                loop.stop()

    def _filtering_with(self, limit_filter: IRequestFilter) -> bool:
        """
        Whether a request still waits for a decision of C{limit_filter}.
        """
        for connection in self._service.factory.connections:
            exchange = connection.exchange
            if (
                exchange is not None
                and exchange.state == ExchangeState.FILTERING
                and exchange.relay.filters is not None
                and limit_filter in exchange.relay.filters.filters
            ):
                return True
        return False

    def _close_failed(self, failure: Failure) -> None:
        self.log.failure("closing a retired rate limiter failed", failure)

    def stop(self) -> None:
        """
        Stop looking at what was retired (the balancer stops; it closes
        the retired limiters itself).
        """
        loop, self._retirement = self._retirement, None
        if loop is not None and loop.running:
            loop.stop()


def install_sighup(reactor: Any, reload: Callable[[], object]) -> Callable[[int, Any], None]:
    """
    Call C{reload} in the reactor thread on every C{SIGHUP}.

    @return: the handler installed.
    """

    def handler(number: int, frame: FrameType | None) -> None:
        reactor.callFromThread(reload)

    signal.signal(signal.SIGHUP, handler)
    return handler


def check_config(config: BalancerConfig) -> None:
    """
    Check what only building the balancer would: the admin token file, the
    rate limiter, the health checker and every other object of the service
    tree (and, once they exist, certificates and firewall rules), built on
    a memory reactor: nothing listens or connects.

    @raise ValueError: with the first problem.
    """
    from twisted.internet.testing import MemoryReactorClock

    from balancebeam.service import BalancerService

    listen = tuple(
        "tcp:0:interface=127.0.0.1" if endpoint.startswith("systemd:") else endpoint
        for endpoint in config.listen
    )
    # With --demo the upstreams may be none: the demo ones start only for real.
    upstreams = config.upstreams or (UpstreamSpec("127.0.0.1", 1),)
    BalancerService(
        dataclasses.replace(config, listen=listen, upstreams=upstreams), MemoryReactorClock()
    )
