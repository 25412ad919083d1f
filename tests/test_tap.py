"""
Tests for L{balancebeam.tap}: command-line parsing, validation and
L{balancebeam.tap.makeService}.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from balancebeam import config as config_module
from balancebeam import tap
from balancebeam.config import BalancerConfig, Timeouts, UpstreamSpec, build_config
from balancebeam.demo import DemoUpstreamsService
from balancebeam.service import BalancerService
from tests.test_config import BAD_VALUES, GOOD_VALUES, with_base


def parse(*args: str) -> tap.Options:
    """
    Parse C{args} as the arguments of C{twistd balancebeam}.
    """
    options = tap.Options()
    options.parseOptions(list(args))
    return options


def argv(values: Mapping[str, object]) -> list[str]:
    """
    The command line that gives C{values} (keyed as for
    L{config_module.build_config}): a flag for each C{True}, the option
    repeated for each element of a list.
    """
    args: list[str] = []
    for name, value in values.items():
        if value is True:
            args.append(f"--{name}")
        elif isinstance(value, list):
            for item in value:
                args += [f"--{name}", item]
        else:
            assert isinstance(value, str), (name, value)
            args += [f"--{name}", value]
    return args


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
        The command line's defaults are the configuration's (spelled out in
        C{tests.test_config}): one C{--upstream} builds the same record.
        """
        self.assertEqual(
            config_of("--upstream", "127.0.0.1:8081"),
            build_config({"upstream": ["127.0.0.1:8081"]}),
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
            "before both sides are closed. [default: 3600]",
            "the response is cut). [default: 60]",
            "Longest silence while a client sends a request body (then 408). [default: 60]",
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
                    "cache-lock-timeout",
                    "cache-max-object-size",
                    "cache-size",
                    "cache-store-set-cookie",
                    "waf",
                    "waf-anomaly-threshold",
                    "waf-body-limit",
                    "waf-paranoia",
                    "waf-rules",
                    "waf-threads",
                    "admin-bind",
                    "admin-token-file",
                    "check-config",
                    "config",
                    "workers",
                    "reuse-port",
                    "max-client-connections",
                    "max-connections-per-client",
                    "listen-backlog",
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
                    "tls-bind",
                    "tls-cert",
                    "tls-cert-dir",
                    "trust-forwarded-for",
                    "tunnel-idle-timeout",
                    "upstream",
                    "upstream-ca",
                    "upstream-client-cert",
                    "upstream-timeout",
                    "upstream-tls-name",
                    "upstream-tls-verify",
                    "upstream-weight",
                    "version",
                ]
            ),
        )
        for name in names:
            self.assertIn(f"--{name}", text)
            self.assertTrue(options.docs[name], name)

    def test_options_declare_config(self) -> None:
        """
        Every option of L{config_module.OPTIONS} is declared with its kind
        and, for those taking one value, its default (except C{--bind}, whose
        absence matters), and nothing else is declared.
        """
        options = tap.Options()
        flags = {flag[0] for flag in options.optFlags}
        defaults = {parameter[0]: parameter[2] for parameter in options.optParameters}
        repeatable = {
            name.replace("_", "-")[4:] for name in dir(options) if name.startswith("opt_")
        }
        for name, option in config_module.OPTIONS.items():
            if option.kind == config_module.FLAG:
                self.assertIn(name, flags)
            elif option.kind == config_module.LIST:
                self.assertIn(name, repeatable)
            elif name == "bind":
                self.assertIsNone(defaults[name])
            else:
                self.assertEqual(defaults[name], option.default, name)
        self.assertEqual(
            flags | set(defaults),
            {name for name, o in config_module.OPTIONS.items() if o.kind != config_module.LIST}
            # Command line only: the configuration file and its check.
            | {"config", "check-config"},
        )

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

    def test_good_values(self) -> None:
        """
        Each good value of L{tests.test_config.GOOD_VALUES}, given on the
        command line, lands in its field.
        """
        for name, values, getter, expected in GOOD_VALUES:
            self.assertEqual(getter(config_of(*argv(with_base(values)))), expected, name)

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
            "--tunnel-idle-timeout",
            "6.5",
        )
        self.assertEqual(config.timeouts, Timeouts(1.5, 2.0, 3.0, 4.0, 5.0, 6.5))


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
            "--connect-timeout '-1' must be a finite number greater than 0",
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
        Every bad value of L{tests.test_config.BAD_VALUES}, given on the
        command line, is a usage error naming its flag.
        """
        for _, values, message in BAD_VALUES:
            self.assert_usage_error(argv(with_base(values)), message)

    def test_non_ascii_health_check_path(self) -> None:
        """
        A health-check path the probe cannot send (non-ASCII) is a usage error naming the flag.
        """
        self.assert_usage_error(
            ["-u", "a:1", "--active-health-check-path", "/caf\u00e9"],
            "--active-health-check-path '/caf\u00e9' must contain only printable ASCII",
        )

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
