"""
Tests for L{balancebeam.configfile} (the TOML configuration file) and for
C{--config} and C{--check-config} on the command line.
"""

from __future__ import annotations

import io
import os
import tempfile
from contextlib import redirect_stderr, redirect_stdout

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from balancebeam import tap
from balancebeam.config import BalancerConfig, ConfigError, UpstreamSpec
from balancebeam.configfile import (
    MAX_CONFIG_BYTES,
    ConfigFileError,
    load_config,
    read_config_file,
)

GOOD = """\
# A comment.
bind = "127.0.0.1:8080"
strategy = "least-connections"
active-health-check-interval = 5
upstream-timeout = 2.5
access-log = true
trust-forwarded-for = ["10.0.0.0/8"]

[[upstream]]
address = "10.0.0.11:8080"
weight = 3

[[upstream]]
address = "[2001:db8::7]:8081"
"""


def write(case: SynchronousTestCase, text: str) -> str:
    """
    A configuration file holding C{text}, removed after the test.
    """
    descriptor, path = tempfile.mkstemp(prefix="balancebeam-", suffix=".toml")
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(text)
    case.addCleanup(os.remove, path)
    return path


class LoadTests(SynchronousTestCase):
    """
    A valid file becomes the configuration; the command line replaces it.
    """

    def test_every_kind_of_key(self) -> None:
        """
        Values, numbers, flags, lists and upstream tables with weights are read.
        """
        config = load_config(write(self, GOOD), {})
        self.assertIsInstance(config, BalancerConfig)
        self.assertEqual(config.listen, ("tcp:8080:interface=127.0.0.1",))
        self.assertEqual(config.strategy, "least-connections")
        self.assertEqual(config.active_health_check_interval, 5.0)
        self.assertEqual(config.timeouts.upstream, 2.5)
        self.assertTrue(config.access_log)
        self.assertEqual(config.trusted_proxies, ("10.0.0.0/8",))
        self.assertEqual(
            config.upstreams,
            (UpstreamSpec("10.0.0.11", 8080, 3), UpstreamSpec("2001:db8::7", 8081, 1)),
        )

    def test_connection_limits(self) -> None:
        """
        C{max-connections-per-client} and C{listen-backlog} are read from
        the file, as numbers or strings.
        """
        text = 'upstream = "a:1"\nmax-connections-per-client = 8\nlisten-backlog = "1024"\n'
        config = load_config(write(self, text), {})
        self.assertEqual((config.max_connections_per_client, config.listen_backlog), (8, 1024))

    def test_upstream_strings(self) -> None:
        """
        C{upstream} may be an array of strings, with C{upstream-weight} as on
        the command line, or one string.
        """
        config = load_config(
            write(self, 'upstream = ["a:1", "b:2"]\nupstream-weight = ["b:2=4"]\n'), {}
        )
        self.assertEqual(config.upstreams, (UpstreamSpec("a", 1), UpstreamSpec("b", 2, 4)))
        config = load_config(write(self, 'upstream = "a:1"\n'), {})
        self.assertEqual(config.upstreams, (UpstreamSpec("a", 1),))

    def test_command_line_replaces(self) -> None:
        """
        An option given on the command line replaces the file's value; a
        repeatable one replaces the whole list, upstream weights included.
        """
        path = write(self, GOOD)
        config = load_config(path, {"strategy": "p2c", "upstream": ["c:3"]})
        self.assertEqual(config.strategy, "p2c")
        self.assertEqual(config.upstreams, (UpstreamSpec("c", 3),))
        self.assertEqual(config.active_health_check_interval, 5.0)

    def test_explicit_weight_wins(self) -> None:
        """
        A command-line C{--upstream-weight} replaces a table's weight for
        that upstream and keeps the others.
        """
        text = GOOD + '\n[[upstream]]\naddress = "c:3"\nweight = 2\n'
        config = load_config(write(self, text), {"upstream-weight": ["10.0.0.11:8080=7"]})
        self.assertEqual([u.weight for u in config.upstreams], [7, 1, 2])

    def test_command_line_error_names_flag(self) -> None:
        """
        A bad command-line value is reported with its flag, not the file.
        """
        error = self.assertRaises(
            ConfigError, load_config, write(self, GOOD), {"strategy": "fast"}
        )
        self.assertTrue(str(error).startswith("--strategy 'fast' must be one of"))


class ErrorTests(SynchronousTestCase):
    """
    Every error names the file, the line and the key.
    """

    def error(self, text: str) -> str:
        """
        The message of the error that loading C{text} raises, the path
        replaced by C{FILE}.
        """
        path = write(self, text)
        error = self.assertRaises(ConfigFileError, load_config, path, {})
        return str(error).replace(path, "FILE")

    def test_unknown_key(self) -> None:
        """
        An unknown key is named with its line and the closest option.
        """
        self.assertEqual(
            self.error('upstream = ["a:1"]\n\nstrategi = "p2c"\n'),
            "FILE:3: strategi is not an option (did you mean strategy?)",
        )

    def test_bad_value(self) -> None:
        """
        A value the option's parser refuses is named with its line.
        """
        self.assertEqual(
            self.error('upstream = ["a:1"]\n# x\nconnect-timeout = -1\n'),
            "FILE:3: connect-timeout '-1' must be a finite number greater than 0",
        )

    def test_bad_listen_backlog(self) -> None:
        """
        A C{listen-backlog} out of range is named with its line.
        """
        self.assertEqual(
            self.error('upstream = ["a:1"]\nlisten-backlog = 0\n'),
            "FILE:2: listen-backlog '0' must be a whole number from 1 to 65535",
        )

    def test_bad_list_element(self) -> None:
        """
        A bad element of a multi-line array is named with its own line.
        """
        text = 'upstream = [\n  "a:1",\n  "b:99999",\n]\n'
        self.assertEqual(
            self.error(text), "FILE:3: upstream[2] 'b:99999': port 99999 is out of range 1-65535"
        )

    def test_wrong_types(self) -> None:
        """
        A flag that is not a boolean, a value that is a table and a list of
        numbers are refused with their lines.
        """
        self.assertEqual(
            self.error('upstream = ["a:1"]\naccess-log = "yes"\n'),
            "FILE:2: access-log must be true or false, not 'yes'",
        )
        self.assertEqual(
            self.error('upstream = ["a:1"]\nstrategy = ["p2c"]\n'),
            "FILE:2: strategy must be a string or a number, not ['p2c']",
        )
        self.assertEqual(
            self.error('upstream = ["a:1"]\nlisten = [1100]\n'),
            "FILE:2: listen must be an array of strings, not [1100]",
        )

    def test_upstream_table_errors(self) -> None:
        """
        A table's unknown key, missing or bad address, and bad weight are
        named as C{upstream[N].key} with their lines.
        """
        self.assertEqual(
            self.error(
                '[[upstream]]\naddress = "a:1"\n\n[[upstream]]\naddress = "b:2"\ntls = 1\n'
            ),
            "FILE:6: upstream[2].tls is not an upstream setting (known: address, weight)",
        )
        self.assertEqual(
            self.error("[[upstream]]\nweight = 2\n"),
            "FILE:1: upstream[1].address is required: the upstream's HOST:PORT",
        )
        self.assertEqual(
            self.error('[[upstream]]\naddress = "a"\n'),
            "FILE:2: upstream[1].address 'a' is not of the form HOST:PORT",
        )
        self.assertEqual(
            self.error('[[upstream]]\naddress = "a:1"\nweight = 0\n'),
            "FILE:3: upstream[1].weight 0 must be a whole number of at least 1",
        )

    def test_inline_tables(self) -> None:
        """
        Upstream tables written inline are read, and their errors point at
        their element's line.
        """
        text = (
            'upstream = [\n  { address = "a:1", weight = 2 },\n  { address = "b:2", x = 1 },\n]\n'
        )
        self.assertEqual(
            self.error(text),
            "FILE:3: upstream[2].x is not an upstream setting (known: address, weight)",
        )
        config = load_config(write(self, 'upstream = [{ address = "a:1", weight = 2 }]\n'), {})
        self.assertEqual(config.upstreams, (UpstreamSpec("a", 1, 2),))

    def test_duplicate_upstream(self) -> None:
        """
        An upstream given twice is named at its second occurrence.
        """
        self.assertEqual(
            self.error('[[upstream]]\naddress = "a:1"\n[[upstream]]\naddress = "a:1"\n'),
            "FILE:4: upstream[2].address 'a:1': a:1 is given twice",
        )

    def test_missing_upstream(self) -> None:
        """
        A file without upstreams names the key, without a line.
        """
        self.assertTrue(self.error('strategy = "p2c"\n').startswith("FILE: upstream is required"))

    def test_not_toml(self) -> None:
        """
        A syntax error is reported with tomllib's line.
        """
        message = self.error('upstream = ["a:1"]\nstrategy = p2c\n')
        self.assertTrue(message.startswith("FILE:2: is not valid TOML: "), message)

    def test_command_line_only(self) -> None:
        """
        C{config} and C{check-config} are refused in the file.
        """
        self.assertEqual(
            self.error('upstream = ["a:1"]\nconfig = "other.toml"\n'),
            "FILE:2: config is a command-line option only",
        )

    def test_unreadable(self) -> None:
        """
        A missing file is an error naming it.
        """
        error = self.assertRaises(ConfigFileError, read_config_file, "/nonexistent/bb.toml")
        self.assertEqual(
            str(error), "/nonexistent/bb.toml: cannot be read: No such file or directory"
        )

    def test_not_a_regular_file_or_too_large(self) -> None:
        """
        A device, a FIFO or a file over 1 MiB is refused at once with one
        line, without reading it all or waiting for a writer.
        """
        error = self.assertRaises(ConfigFileError, read_config_file, "/dev/zero")
        self.assertEqual(str(error), "/dev/zero: is not a regular file")
        fifo = self.mktemp()
        os.mkfifo(fifo)
        error = self.assertRaises(ConfigFileError, read_config_file, fifo)
        self.assertEqual(str(error), f"{fifo}: is not a regular file")
        big = self.mktemp()
        with open(big, "wb") as file:
            file.write(b"# " + b"x" * MAX_CONFIG_BYTES + b"\n")
        error = self.assertRaises(ConfigFileError, read_config_file, big)
        self.assertEqual(str(error), f"{big}: is larger than 1024 KiB")
        directory = self.mktemp()
        os.mkdir(directory)
        error = self.assertRaises(ConfigFileError, read_config_file, directory)
        self.assertEqual(str(error), f"{directory}: cannot be read: Is a directory")

    def test_strings_with_brackets_and_comments(self) -> None:
        """
        Brackets, quotes and comment signs inside strings do not confuse the
        line of a later key.
        """
        text = (
            'upstream = ["a:1"] # ] [\n'
            'active-health-check-path = "/h[#]\\"x"\n'
            "listen = '''\ntcp:1\n'''\n"
            "strategy = 'bad'\n"
        )
        self.assertEqual(
            self.error(text),
            "FILE:6: strategy 'bad' must be one of random, round-robin, least-connections, p2c",
        )


class CommandLineTests(SynchronousTestCase):
    """
    C{--config} and C{--check-config} through L{tap.Options}.
    """

    def parse(self, *arguments: str) -> tap.Options:
        """
        Parse C{arguments}.
        """
        options = tap.Options()
        options.parseOptions(list(arguments))
        return options

    def test_flags_override_file(self) -> None:
        """
        Options given on the command line replace the file's; the others
        come from the file, not from the command line's defaults.
        """
        path = write(self, GOOD)
        options = self.parse("--config", path, "--strategy", "random", "-u", "x:1")
        assert options.config is not None
        self.assertEqual(options.config.strategy, "random")
        self.assertEqual(options.config.upstreams, (UpstreamSpec("x", 1),))
        self.assertEqual(options.config.active_health_check_interval, 5.0)
        self.assertEqual(options.given, {"config", "strategy", "upstream"})

    def test_short_and_equals_forms(self) -> None:
        """
        C{-c FILE} and C{--flag=value} count as given.
        """
        path = write(self, GOOD)
        options = self.parse("-c", path, "--upstream-timeout=9")
        assert options.config is not None
        self.assertEqual(options.config.timeouts.upstream, 9.0)
        self.assertEqual(options.config.strategy, "least-connections")

    def test_file_error_is_usage_error(self) -> None:
        """
        A bad file is a usage error naming the file, line and key.
        """
        path = write(self, 'upstream = ["a:1"]\nstrategy = "fast"\n')
        error = self.assertRaises(usage.UsageError, self.parse, "--config", path)
        self.assertEqual(
            str(error),
            f"{path}:2: strategy 'fast' must be one of random, round-robin, "
            "least-connections, p2c",
        )

    def check(self, *arguments: str) -> tuple[int, str, str]:
        """
        Run C{--check-config} with C{arguments}.

        @return: the exit status, standard output and standard error.
        """
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            exit = self.assertRaises(SystemExit, self.parse, "--check-config", *arguments)
        code = exit.code if isinstance(exit.code, int) else 1
        return code, out.getvalue(), err.getvalue()

    def test_check_valid(self) -> None:
        """
        A valid configuration exits 0 and says so.
        """
        path = write(self, GOOD)
        code, out, err = self.check("--config", path)
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(
            out,
            f"balancebeam: configuration OK ({path}: 2 upstream(s), "
            "listening on tcp:8080:interface=127.0.0.1)\n",
        )

    def test_check_invalid(self) -> None:
        """
        An invalid file exits 1 with the error on standard error.
        """
        path = write(self, 'upstream = ["a:1"]\npool-warm = 99\n')
        code, out, err = self.check("--config", path)
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(
            err,
            f"balancebeam: configuration error: {path}:2: pool-warm '99': cannot exceed "
            "--pool-max-idle-per-upstream (32)\n",
        )

    def test_check_reads_token_file(self) -> None:
        """
        The check reads the admin token file: a missing one fails it.
        """
        path = write(self, GOOD + "")
        code, _, err = self.check(
            "--config",
            path,
            "--admin-bind",
            "0.0.0.0:9100",
            "--admin-token-file",
            "/nonexistent/token",
        )
        self.assertEqual(code, 1)
        self.assertIn("--admin-token-file '/nonexistent/token' cannot be read", err)

    def test_check_accepts_systemd_sockets(self) -> None:
        """
        A C{systemd:} listener is checked for its syntax only: the check runs
        where systemd passes no socket (C{ExecReload}).
        """
        code, out, _ = self.check("-u", "a:1", "--listen", "systemd:domain=INET:index=0")
        self.assertEqual(code, 0)
        self.assertIn("listening on systemd:domain=INET:index=0", out)
        code, _, err = self.check("-u", "a:1", "--listen", "systemd:domain=NOPE:index=0")
        self.assertEqual(code, 1)
        self.assertIn("systemd:domain=INET:index=0", err)

    def test_without_config_file(self) -> None:
        """
        C{--check-config} without C{--config} checks the command line.
        """
        code, out, _ = self.check("-u", "a:1")
        self.assertEqual(code, 0)
        self.assertIn("(command line: 1 upstream(s)", out)

    def test_check_demo(self) -> None:
        """
        C{--demo} without upstreams passes the check (the demo upstreams
        start only for real).
        """
        code, out, _ = self.check("--demo")
        self.assertEqual(code, 0)
        self.assertIn("(command line: 0 upstream(s)", out)


class DemoReloadTests(SynchronousTestCase):
    """
    The reload C{makeService} wires up keeps the demo upstreams.
    """

    def test_demo_upstreams_kept(self) -> None:
        """
        A reload from a file, under C{--demo}, balances over the file's
        upstreams and the demo ones.
        """
        from twisted.application.service import MultiService

        from balancebeam.service import BalancerService
        from tests.test_tap import PortAssigningReactor

        path = write(self, GOOD)
        options = tap.Options()
        options.parseOptions(["--demo", "--config", path])
        root = tap.makeService(options, PortAssigningReactor())
        assert isinstance(root, MultiService)
        balancer = list(root)[1]
        assert isinstance(balancer, BalancerService)
        self.assertEqual(len(balancer.registry.upstreams), 5)
        write_over(path, GOOD.replace("10.0.0.11:8080", "10.0.0.13:8080"))
        self.assertTrue(balancer.reloader.reload())
        names = [u.name for u in balancer.registry.upstreams]
        self.assertEqual(len(names), 5)
        self.assertIn("10.0.0.13:8080", names)
        self.assertNotIn("10.0.0.11:8080", names)


def write_over(path: str, text: str) -> None:
    """
    Replace C{path}'s contents.
    """
    with open(path, "w", encoding="utf-8") as file:
        file.write(text)
