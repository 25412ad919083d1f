"""
Tests for L{balancebeam.tap}: command-line parsing, validation and
L{balancebeam.tap.makeService}.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from balancebeam import tap
from balancebeam.config import BalancerConfig, Limits, Timeouts, UpstreamSpec
from balancebeam.demo import DemoUpstreamsService
from balancebeam.ratelimit.redis import ON_ERROR_POLICIES
from balancebeam.service import BalancerService


def parse(*args: str) -> tap.Options:
    """
    Parse C{args} as the arguments of C{twistd balancebeam}.
    """
    options = tap.Options()
    options.parseOptions(list(args))
    return options


def config_of(*args: str) -> BalancerConfig:
    """
    Parse C{args} and return the resulting configuration.
    """
    config = parse(*args).config
    assert config is not None
    return config


class DefaultsTests(SynchronousTestCase):
    """
    With only an upstream given, every setting has its documented default.
    """

    def test_defaults(self) -> None:
        """
        The configuration built from one C{--upstream} holds the documented defaults.
        """
        self.assertEqual(
            config_of("--upstream", "127.0.0.1:8081"),
            BalancerConfig(
                upstreams=(UpstreamSpec("127.0.0.1", 8081),),
                listen=("tcp:1100:interface=0.0.0.0",),
                timeouts=Timeouts(
                    connect=5.0,
                    upstream=60.0,
                    client_header=10.0,
                    client_idle=60.0,
                    client_body=60.0,
                ),
                limits=Limits(max_head_size=16384, max_header_count=100, max_body_size=None),
                strategy="random",
                active_health_check_interval=10.0,
                active_health_check_path="/",
                health_check_timeout=2.0,
                health_check_rise=2,
                health_check_fall=2,
                passive_retry_interval=10.0,
                max_requests_per_minute=0,
                rate_limit_window=60.0,
                rate_limit_algorithm="sliding",
                rate_limit_backend="memory",
                rate_limit_headers=False,
                rate_limit_redis_timeout=0.05,
                rate_limit_on_error="allow",
                rate_limit_max_keys=1_000_000,
                trusted_proxies=(),
                pool_max_idle_per_upstream=32,
                pool_idle_timeout=30.0,
                pool_max_requests_per_connection=0,
                pool_warm=0,
                pool_max_connections_per_upstream=0,
                queue_timeout=10.0,
                access_log=False,
                max_client_connections=10000,
                shutdown_timeout=10.0,
            ),
        )

    def test_help_shows_defaults(self) -> None:
        """
        C{--help} shows the default of the main flags next to them.
        """
        text = " ".join(str(tap.Options()).split())
        for expected in [
            "--bind=",
            "[default: 0.0.0.0:1100]",
            "turns active checks off. [default: 10]",
            "only HTTP 200 counts as healthy. [default: /]",
            "[default: the lesser of the interval and 2]",
            "then this is N requests per window. [default: 0]",
            "(power of two choices). [default: random]",
            "Larger heads get 431. [default: 16k]",
            "0 = unlimited. [default: unlimited]",
            "twistd -n --pidfile= balancebeam --demo",
        ]:
            self.assertIn(expected, text)

    def test_help_lists_every_flag(self) -> None:
        """
        Every long option appears in C{--help}, each with its own help text.
        """
        options = tap.Options()
        text = str(options)
        names = sorted(name.rstrip("=") for name in options.longOpt)
        self.assertEqual(
            names,
            sorted(
                [
                    "access-log",
                    "max-client-connections",
                    "shutdown-timeout",
                    "active-health-check-interval",
                    "active-health-check-path",
                    "bind",
                    "client-body-timeout",
                    "client-header-timeout",
                    "client-idle-timeout",
                    "connect-timeout",
                    "demo",
                    "health-check-fall",
                    "health-check-rise",
                    "health-check-timeout",
                    "help",
                    "listen",
                    "max-body-size",
                    "max-head-size",
                    "max-header-count",
                    "max-requests-per-minute",
                    "passive-retry-interval",
                    "pool-idle-timeout",
                    "pool-max-connections-per-upstream",
                    "pool-max-idle-per-upstream",
                    "pool-max-requests-per-connection",
                    "pool-warm",
                    "queue-timeout",
                    "rate-limit-algorithm",
                    "rate-limit-backend",
                    "rate-limit-headers",
                    "rate-limit-max-keys",
                    "rate-limit-on-error",
                    "rate-limit-redis-timeout",
                    "rate-limit-window",
                    "strategy",
                    "trust-forwarded-for",
                    "upstream",
                    "upstream-timeout",
                    "upstream-weight",
                    "version",
                ]
            ),
        )
        for name in names:
            self.assertIn(f"--{name}", text)
            self.assertTrue(options.docs[name], name)

    def test_health_check_timeout_follows_short_interval(self) -> None:
        """
        The probe timeout defaults to the interval when that is under 2 seconds.
        """
        config = config_of("-u", "a:1", "--active-health-check-interval", "0.5")
        self.assertEqual(config.health_check_timeout, 0.5)

    def test_health_check_timeout_with_checks_off(self) -> None:
        """
        With active checks off, the probe timeout still defaults to 2 seconds.
        """
        config = config_of("-u", "a:1", "--active-health-check-interval", "0")
        self.assertEqual(config.active_health_check_interval, 0.0)
        self.assertEqual(config.health_check_timeout, 2.0)

    def test_health_check_timeout_given(self) -> None:
        """
        An explicit C{--health-check-timeout} wins over the derived default.
        """
        config = config_of("-u", "a:1", "--health-check-timeout", "7.5")
        self.assertEqual(config.health_check_timeout, 7.5)


class UpstreamTests(SynchronousTestCase):
    """
    C{--upstream} and C{--upstream-weight}.
    """

    def test_order_kept(self) -> None:
        """
        Repeated C{--upstream} flags keep their order, short and long forms mixed.
        """
        config = config_of("-u", "127.0.0.1:8082", "--upstream", "127.0.0.1:8081", "-u", "b:9")
        self.assertEqual(
            config.upstreams,
            (
                UpstreamSpec("127.0.0.1", 8082),
                UpstreamSpec("127.0.0.1", 8081),
                UpstreamSpec("b", 9),
            ),
        )

    def test_ipv6(self) -> None:
        """
        An IPv6 literal in brackets becomes a bare host and a port.
        """
        config = config_of("--upstream", "[::1]:8080")
        self.assertEqual(config.upstreams, (UpstreamSpec("::1", 8080),))
        self.assertEqual(config.upstreams[0].name, "[::1]:8080")

    def test_hostname(self) -> None:
        """
        Hostnames are kept as given, to be resolved when connecting.
        """
        config = config_of("--upstream", "backend.example:80")
        self.assertEqual(config.upstreams, (UpstreamSpec("backend.example", 80),))

    def test_weights(self) -> None:
        """
        C{--upstream-weight} sets the weight of the upstream it names; others keep 1.
        """
        config = config_of(
            "-u",
            "127.0.0.1:8081",
            "-u",
            "[::1]:8082",
            "--upstream-weight",
            "[::1]:8082=3",
        )
        self.assertEqual(
            config.upstreams,
            (UpstreamSpec("127.0.0.1", 8081, 1), UpstreamSpec("::1", 8082, 3)),
        )

    def test_demo_needs_no_upstream(self) -> None:
        """
        With C{--demo}, no C{--upstream} is needed and the configuration has none yet.
        """
        options = parse("--demo")
        self.assertEqual(options["demo"], 1)
        assert options.config is not None
        self.assertEqual(options.config.upstreams, ())


class ListenTests(SynchronousTestCase):
    """
    C{--bind} and C{--listen}.
    """

    def test_bind(self) -> None:
        """
        C{--bind HOST:PORT} becomes a TCP endpoint string.
        """
        config = config_of("-u", "a:1", "--bind", "127.0.0.1:8080")
        self.assertEqual(config.listen, ("tcp:8080:interface=127.0.0.1",))

    def test_bind_short(self) -> None:
        """
        C{-b} is C{--bind}; an IPv6 interface has its colons escaped.
        """
        config = config_of("-u", "a:1", "-b", "[::1]:8080")
        self.assertEqual(config.listen, ("tcp:8080:interface=\\:\\:1",))

    def test_listen_replaces_default_bind(self) -> None:
        """
        C{--listen} without C{--bind} replaces the default address.
        """
        config = config_of(
            "-u", "a:1", "--listen", "tcp:8080:interface=127.0.0.1", "--listen", "tcp:8081"
        )
        self.assertEqual(config.listen, ("tcp:8080:interface=127.0.0.1", "tcp:8081"))

    def test_listen_with_bind(self) -> None:
        """
        C{--listen} with an explicit C{--bind} listens on both, C{--bind} first.
        """
        config = config_of("-u", "a:1", "--listen", "tcp:8081", "-b", "127.0.0.1:8080")
        self.assertEqual(config.listen, ("tcp:8080:interface=127.0.0.1", "tcp:8081"))


class ValueTests(SynchronousTestCase):
    """
    Values of the other flags are parsed and normalised.
    """

    def test_sizes(self) -> None:
        """
        Sizes accept plain byte counts and k/m suffixes.
        """
        config = config_of(
            "-u",
            "a:1",
            "--max-head-size",
            "32k",
            "--max-body-size",
            "10m",
            "--max-header-count",
            "7",
        )
        self.assertEqual(
            config.limits, Limits(max_head_size=32768, max_header_count=7, max_body_size=10485760)
        )

    def test_max_body_size_zero_is_unlimited(self) -> None:
        """
        C{--max-body-size 0} means no limit.
        """
        config = config_of("-u", "a:1", "--max-body-size", "0")
        self.assertIsNone(config.limits.max_body_size)

    def test_timeouts(self) -> None:
        """
        Each timeout flag lands in its own field, fractions allowed.
        """
        config = config_of(
            "-u",
            "a:1",
            "--connect-timeout",
            "1.5",
            "--upstream-timeout",
            "2",
            "--client-header-timeout",
            "3",
            "--client-idle-timeout",
            "4",
            "--client-body-timeout",
            "5",
        )
        self.assertEqual(config.timeouts, Timeouts(1.5, 2.0, 3.0, 4.0, 5.0))

    def test_choices_match_implementations(self) -> None:
        """
        The choices of C{--rate-limit-on-error} are those the Redis limiter knows.
        """
        self.assertEqual(tap.RATE_LIMIT_ON_ERROR, ON_ERROR_POLICIES)

    def test_strategies(self) -> None:
        """
        Every documented strategy is accepted.
        """
        for strategy in ["random", "round-robin", "least-connections", "p2c"]:
            self.assertEqual(config_of("-u", "a:1", "--strategy", strategy).strategy, strategy)

    def test_rate_limit(self) -> None:
        """
        The rate-limit flags land in their fields, networks in canonical form.
        """
        config = config_of(
            "-u",
            "a:1",
            "--max-requests-per-minute",
            "5",
            "--rate-limit-window",
            "10",
            "--rate-limit-algorithm",
            "fixed",
            "--rate-limit-headers",
            "--rate-limit-backend",
            "redis://127.0.0.1:6380/2",
            "--rate-limit-redis-timeout",
            "0.2",
            "--rate-limit-on-error",
            "deny",
            "--rate-limit-max-keys",
            "500",
            "--trust-forwarded-for",
            "10.1.2.3/8",
            "--trust-forwarded-for",
            "2001:db8::1",
        )
        self.assertEqual(
            (
                config.max_requests_per_minute,
                config.rate_limit_window,
                config.rate_limit_algorithm,
                config.rate_limit_headers,
                config.rate_limit_backend,
                config.rate_limit_redis_timeout,
                config.rate_limit_on_error,
                config.rate_limit_max_keys,
                config.trusted_proxies,
            ),
            (
                5,
                10.0,
                "fixed",
                True,
                "redis://127.0.0.1:6380/2",
                0.2,
                "deny",
                500,
                ("10.0.0.0/8", "2001:db8::1/128"),
            ),
        )

    def test_redis_url_completed(self) -> None:
        """
        A Redis URL without port or database gets 6379 and 0.
        """
        self.assertEqual(tap.parse_rate_limit_backend("redis://cache"), "redis://cache:6379/0")
        self.assertEqual(tap.parse_rate_limit_backend("redis://[::1]/3"), "redis://[::1]:6379/3")
        self.assertEqual(
            tap.parse_rate_limit_backend("redis://[::1]:7000/"), "redis://[::1]:7000/0"
        )

    def test_health_and_pool(self) -> None:
        """
        Health-check and pool flags land in their fields.
        """
        config = config_of(
            "-u",
            "a:1",
            "--active-health-check-interval",
            "1",
            "--active-health-check-path",
            "/health?full=1",
            "--health-check-rise",
            "3",
            "--health-check-fall",
            "4",
            "--passive-retry-interval",
            "0",
            "--pool-max-idle-per-upstream",
            "8",
            "--pool-idle-timeout",
            "4.5",
            "--pool-max-requests-per-connection",
            "100",
            "--pool-warm",
            "2",
            "--pool-max-connections-per-upstream",
            "16",
            "--queue-timeout",
            "0",
            "--access-log",
        )
        self.assertEqual(
            (
                config.active_health_check_interval,
                config.active_health_check_path,
                config.health_check_timeout,
                config.health_check_rise,
                config.health_check_fall,
                config.passive_retry_interval,
                config.pool_max_idle_per_upstream,
                config.pool_idle_timeout,
                config.pool_max_requests_per_connection,
                config.pool_warm,
                config.pool_max_connections_per_upstream,
                config.queue_timeout,
                config.access_log,
            ),
            (1.0, "/health?full=1", 1.0, 3, 4, 0.0, 8, 4.5, 100, 2, 16, 0.0, True),
        )


class InvalidValueTests(SynchronousTestCase):
    """
    Each bad value is a usage error that names its flag.
    """

    def assert_usage_error(self, args: list[str], message: str) -> None:
        """
        Parsing C{args} raises a L{usage.UsageError} whose text starts with C{message}.
        """
        error = self.assertRaises(usage.UsageError, parse, *args)
        self.assertTrue(
            str(error).startswith(message), f"{str(error)!r} does not start with {message!r}"
        )

    def test_messages(self) -> None:
        """
        The error for a value the config parsers reject reads as one sentence.
        """
        self.assert_usage_error(
            ["--upstream", "nocolon"], "--upstream 'nocolon' is not of the form HOST:PORT"
        )
        self.assert_usage_error(
            ["--upstream", "127.0.0.1:70000"],
            "--upstream '127.0.0.1:70000': port 70000 is out of range 1-65535",
        )
        self.assert_usage_error(
            ["-u", "a:1", "--connect-timeout", "-1"],
            "--connect-timeout '-1' must be a finite number of at least 0",
        )

    def test_no_upstream(self) -> None:
        """
        Without C{--upstream} or C{--demo}, parsing fails and says what to do.
        """
        self.assert_usage_error(
            [],
            "--upstream is required: give at least one HOST:PORT "
            "(e.g. --upstream 127.0.0.1:8081), or use --demo",
        )

    def test_bad_values(self) -> None:
        """
        Every flag rejects a bad value with an error naming it.
        """
        cases = [
            (["-b", "0.0.0.0:70000"], "--bind '0.0.0.0:70000'"),
            (["-b", "nocolon"], "--bind 'nocolon'"),
            (["-u", "::1:80"], "--upstream '::1:80': put IPv6 addresses in brackets"),
            (["-u", "[fe80::zz]:80"], "--upstream '[fe80::zz]:80'"),
            (["-u", "a:1", "-u", "a:1"], "--upstream 'a:1': a:1 is given twice"),
            (["--listen", "tcp:abc"], "--listen 'tcp:abc' is not a server endpoint"),
            (["--listen", "nosuch:80"], "--listen 'nosuch:80' is not a server endpoint"),
            (["--listen", ""], "--listen '' is empty"),
            (["--listen", "tcp:81", "--listen", "tcp:81"], "--listen 'tcp:81': this endpoint"),
            (["--active-health-check-interval", "-1"], "--active-health-check-interval '-1'"),
            (["--active-health-check-interval", "nan"], "--active-health-check-interval 'nan'"),
            (["--active-health-check-path", "health"], "--active-health-check-path 'health'"),
            (["--active-health-check-path", "/a b"], "--active-health-check-path '/a b'"),
            (["--health-check-timeout", "0"], "--health-check-timeout '0'"),
            (["--health-check-rise", "0"], "--health-check-rise '0'"),
            (["--health-check-fall", "1.5"], "--health-check-fall '1.5'"),
            (["--passive-retry-interval", "-3"], "--passive-retry-interval '-3'"),
            (["--max-requests-per-minute", "-5"], "--max-requests-per-minute '-5'"),
            (["--rate-limit-window", "0"], "--rate-limit-window '0'"),
            (["--rate-limit-algorithm", "leaky"], "--rate-limit-algorithm 'leaky' must be one"),
            (["--rate-limit-backend", "redis"], "--rate-limit-backend 'redis'"),
            (["--rate-limit-backend", "redis://h:1/x"], "--rate-limit-backend 'redis://h:1/x'"),
            (["--rate-limit-backend", "redis://h:99999/0"], "--rate-limit-backend"),
            (["--rate-limit-backend", "redis://u:p@h:1/0"], "--rate-limit-backend"),
            (["--rate-limit-redis-timeout", "0"], "--rate-limit-redis-timeout '0'"),
            (["--rate-limit-on-error", "maybe"], "--rate-limit-on-error 'maybe' must be one"),
            (["--rate-limit-max-keys", "0"], "--rate-limit-max-keys '0'"),
            (["--trust-forwarded-for", "10.0.0.0/33"], "--trust-forwarded-for '10.0.0.0/33'"),
            (["--trust-forwarded-for", "everyone"], "--trust-forwarded-for 'everyone'"),
            (["--strategy", "fastest"], "--strategy 'fastest' must be one of random, round-robin"),
            (["--upstream-weight", "a:1"], "--upstream-weight 'a:1'"),
            (["--upstream-weight", "a:1=0"], "--upstream-weight 'a:1=0'"),
            (
                ["--upstream-weight", "b:2=3"],
                "--upstream-weight 'b:2=3': b:2 is not an --upstream (configured: a:1)",
            ),
            (
                ["--upstream-weight", "a:1=2", "--upstream-weight", "a:1=3"],
                "--upstream-weight 'a:1=3': a:1 is weighted twice",
            ),
            (["--pool-max-idle-per-upstream", "-1"], "--pool-max-idle-per-upstream '-1'"),
            (["--pool-idle-timeout", "0"], "--pool-idle-timeout '0'"),
            (["--pool-max-requests-per-connection", "x"], "--pool-max-requests-per-connection"),
            (["--pool-warm", "33"], "--pool-warm 33: cannot exceed --pool-max-idle-per-upstream"),
            (
                ["--pool-warm", "4", "--pool-max-connections-per-upstream", "2"],
                "--pool-warm 4: cannot exceed --pool-max-connections-per-upstream (2)",
            ),
            (["--queue-timeout", "-1"], "--queue-timeout '-1'"),
            (["--connect-timeout", "0"], "--connect-timeout '0'"),
            (["--upstream-timeout", "inf"], "--upstream-timeout 'inf'"),
            (["--client-header-timeout", "ten"], "--client-header-timeout 'ten'"),
            (["--client-idle-timeout", "-60"], "--client-idle-timeout '-60'"),
            (["--client-body-timeout", ""], "--client-body-timeout ''"),
            (["--max-head-size", "0"], "--max-head-size '0'"),
            (["--max-head-size", "lots"], "--max-head-size 'lots'"),
            (["--max-header-count", "0"], "--max-header-count '0'"),
            (["--max-body-size", "-1"], "--max-body-size '-1'"),
        ]
        for args, message in cases:
            self.assert_usage_error(["-u", "a:1", *args], message)

    def test_systemd_without_socket(self) -> None:
        """
        A systemd endpoint outside socket activation is an error pointing at the docs.
        """
        self.assert_usage_error(
            ["-u", "a:1", "--listen", "systemd:domain=INET:index=0"],
            "--listen 'systemd:domain=INET:index=0' names a socket that systemd did not pass",
        )

    def test_unknown_flag(self) -> None:
        """
        An unknown flag is a usage error.
        """
        self.assert_usage_error(
            ["-u", "a:1", "--frobnicate"], "option --frobnicate not recognized"
        )


@implementer(IListeningPort)
class FakePort:
    """
    A listening port that remembers whether it was stopped.

    @ivar address: what L{getHost} returns.
    @ivar stopped: whether L{stopListening} was called.
    """

    def __init__(self, address: IPv4Address) -> None:
        self.address = address
        self.stopped = False

    def startListening(self) -> None:
        """
        Do nothing; the port counts as listening from the start.
        """

    def stopListening(self) -> None:
        """
        Record that the port was closed.
        """
        self.stopped = True

    def getHost(self) -> IPv4Address:
        """
        Return the address given at creation.
        """
        return self.address


class PortAssigningReactor(MemoryReactorClock):
    """
    A memory reactor whose C{listenTCP} hands out port numbers from 40001 up,
    as the kernel does for port 0.

    @ivar ports: every port handed out, in order.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[FakePort] = []

    def listenTCP(
        self, port: int, factory: Any, backlog: int = 50, interface: str = ""
    ) -> FakePort:
        """
        Record the call and return a L{FakePort} on the next free number.
        """
        super().listenTCP(port, factory, backlog, interface)
        fake = FakePort(IPv4Address("TCP", interface, 40001 + len(self.ports)))
        self.ports.append(fake)
        return fake


class PortInUseReactor(MemoryReactorClock):
    """
    A memory reactor on which every TCP port is already in use.
    """

    def listenTCP(
        self, port: int, factory: Any, backlog: int = 50, interface: str = ""
    ) -> IListeningPort:
        """
        Fail as the kernel does for an address in use.
        """
        raise CannotListenError(interface, port, OSError(98, "Address already in use"))


class MakeServiceTests(SynchronousTestCase):
    """
    L{tap.makeService} builds the service tree from parsed options.
    """

    def test_balancer_only(self) -> None:
        """
        Without C{--demo}, the service is the balancer with the parsed
        configuration, and nothing listens yet.
        """
        reactor = PortAssigningReactor()
        options = parse("-u", "127.0.0.1:8081")
        service = tap.makeService(options, reactor)
        assert isinstance(service, BalancerService)
        self.assertIs(service.config, options.config)
        self.assertEqual(reactor.tcpServers, [])

    def test_port_in_use_exits(self) -> None:
        """
        A port already in use ends the process with a one-line message when
        the service starts listening.
        """
        reactor = PortInUseReactor()
        service = tap.makeService(parse("-u", "127.0.0.1:8081", "-b", "127.0.0.1:8080"), reactor)
        error = self.assertRaises(SystemExit, service.privilegedStartService)
        message = str(error.code)
        self.assertTrue(
            message.startswith(
                "balancebeam: cannot listen on tcp:8080:interface=127.0.0.1: "
                "Couldn't listen on 127.0.0.1:8080: [Errno 98] Address already in use"
            ),
            message,
        )
        self.assertNotIn("\n", message)

    def test_demo(self) -> None:
        """
        With C{--demo}, three demo upstreams listen on loopback at once and come
        before the balancer, which gets them after the configured upstreams.
        """
        reactor = PortAssigningReactor()
        service = tap.makeService(parse("--demo", "-u", "127.0.0.1:8081"), reactor)
        self.assertIsInstance(service, MultiService)
        assert isinstance(service, MultiService)
        children: list[IService] = list(service)
        self.assertEqual(len(children), 2)
        self.assertIsInstance(children[0], DemoUpstreamsService)
        self.assertIsInstance(children[1], BalancerService)
        self.assertEqual(
            [(port, interface) for port, _, _, interface in reactor.tcpServers],
            [(0, "127.0.0.1")] * 3,
        )
        self.assertEqual([p.stopped for p in reactor.ports], [False, False, False])
        children[0].stopService()
        self.assertEqual([p.stopped for p in reactor.ports], [True, True, True])

    def test_demo_upstreams_added(self) -> None:
        """
        The balancer's configuration lists the configured upstream, then the demo ones.
        """
        reactor = PortAssigningReactor()
        options = parse("--demo", "-u", "127.0.0.1:8081")
        service = tap.makeService(options, reactor)
        assert isinstance(service, MultiService)
        balancer = list(service)[1]
        assert isinstance(balancer, BalancerService)
        self.assertEqual(
            balancer.config.upstreams,
            (
                UpstreamSpec("127.0.0.1", 8081),
                UpstreamSpec("127.0.0.1", 40001),
                UpstreamSpec("127.0.0.1", 40002),
                UpstreamSpec("127.0.0.1", 40003),
            ),
        )
