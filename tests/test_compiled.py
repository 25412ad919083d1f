"""
The mypyc build (issue 15): which modules are compiled, what the startup
log says, and the fallbacks of C{setup.py} to pure Python.

C{.ci/run} runs the suite twice, once on an in-place mypyc build and once on
pure Python, with C{BALANCEBEAM_EXPECT_BUILD} set to C{compiled} or C{pure}:
then L{BuildTests.test_expected_build} fails unless the modules tested are
the ones expected (C{.so} files, or C{.py} files).
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from importlib.machinery import EXTENSION_SUFFIXES
from typing import Any

from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import Logger, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

import balancebeam
import balancebeam.relay.exchange
from balancebeam.compiled import (
    COMPILED_MODULES,
    compiled_modules,
    describe_build,
    is_compiled,
    module_path,
)
from balancebeam.config import BalancerConfig, UpstreamSpec
from balancebeam.pool import UpstreamPool
from balancebeam.registry import UpstreamRegistry
from balancebeam.relay.client import ClientConnection
from balancebeam.relay.deadlines import DeadlineTimer
from balancebeam.relay.exchange import Exchange
from balancebeam.relay.exchange_core import ExchangeCore
from balancebeam.relay.factory import RelayFactory
from balancebeam.relay.filtering import FilterChain
from balancebeam.routing import Dispatcher
from balancebeam.service import BalancerService
from balancebeam.stats import Stats

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(balancebeam.__file__)))

#: Set by C{.ci/run}: C{compiled} or C{pure}, the build the suite must be testing.
EXPECT_VARIABLE = "BALANCEBEAM_EXPECT_BUILD"


class BuildTests(SynchronousTestCase):
    """
    The modules in use are the build that was asked for, and say so.
    """

    def test_expected_build(self) -> None:
        """
        With C{BALANCEBEAM_EXPECT_BUILD=compiled} every listed module (the
        exchange among them) is an extension module; with C{pure}, none is;
        without the variable, the tree is one or the other, never a mix.
        """
        expected = os.environ.get(EXPECT_VARIABLE, "")
        self.assertIn(expected, ("", "compiled", "pure"))
        compiled = compiled_modules()
        exchange_is_so = balancebeam.relay.exchange.__file__.endswith(tuple(EXTENSION_SUFFIXES))
        if expected == "compiled":
            self.assertEqual(compiled, list(COMPILED_MODULES))
            self.assertTrue(exchange_is_so, balancebeam.relay.exchange.__file__)
        elif expected == "pure":
            self.assertEqual(compiled, [])
            self.assertTrue(balancebeam.relay.exchange.__file__.endswith(".py"))
        else:
            self.assertIn(len(compiled), (0, len(COMPILED_MODULES)))
            self.assertEqual(exchange_is_so, bool(compiled))

    def test_describe_build(self) -> None:
        """
        L{describe_build} names the build in use: compiled with the number
        of modules, or pure Python.
        """
        if is_compiled("balancebeam.relay.exchange"):
            expected = f"compiled with mypyc ({len(COMPILED_MODULES)} modules)"
        else:
            expected = "pure Python"
        self.assertEqual(describe_build(), expected)

    def test_every_listed_module_has_its_source(self) -> None:
        """
        Each module listed for mypyc is a source file of the tree (what
        C{setup.py} hands to C{mypycify}), listed once.
        """
        for name in COMPILED_MODULES:
            self.assertTrue(os.path.isfile(os.path.join(REPO_ROOT, module_path(name))), name)
        self.assertEqual(len(set(COMPILED_MODULES)), len(COMPILED_MODULES))

    def test_startup_log_names_the_build(self) -> None:
        """
        Starting the service logs one line with the version and the build.
        """
        # Twisted annotates trial's TestCase, but the method only calls addCleanup.
        events = EventLoggingObserver.createWithCleanup(
            self, globalLogPublisher  # type: ignore[arg-type]
        )
        config = BalancerConfig(
            upstreams=(UpstreamSpec("127.0.0.1", 8081),),
            listen=("tcp:1100",),
            active_health_check_interval=0.0,
        )
        service = BalancerService(config, MemoryReactorClock())
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)
        lines = [e for e in events if e.get("log_format") == "balancebeam {version}, {build}"]
        self.assertEqual(len(lines), 1)
        self.assertEqual(lines[0]["version"], balancebeam.__version__)
        self.assertEqual(lines[0]["build"], describe_build())


class LoggerTests(SynchronousTestCase):
    """
    The request path's loggers stay class attributes when compiled.
    """

    def test_loggers_are_class_attributes_named_after_their_class(self) -> None:
        """
        Each class's C{log} is reachable on the class and names the class
        (as a native class's instance default, a mypyc build would make one
        per instance, named after whatever code built it).
        """
        classes: list[type] = [ClientConnection, RelayFactory, ExchangeCore, Exchange,
                               FilterChain, Dispatcher, UpstreamPool, UpstreamRegistry,
                               DeadlineTimer]
        for cls in classes:
            logger = cls.log  # type: ignore[attr-defined]  # each of these has one
            self.assertIsInstance(logger, Logger)
            self.assertEqual(logger.namespace, f"{cls.__module__}.{cls.__name__}")


class StatsTests(SynchronousTestCase):
    """
    The counters' snapshot, spelled out for mypyc, misses none.
    """

    def test_snapshot_has_every_counter(self) -> None:
        """
        Every public counter of L{Stats} is in the snapshot with its value;
        the per-class list is reported as C{responses}.
        """
        stats = Stats()
        names = [
            name
            for name in dir(stats)
            if not name.startswith("_") and isinstance(getattr(stats, name), int)
        ]
        self.assertEqual(len(names), 13)
        for value, name in enumerate(names, 1):
            setattr(stats, name, value)
        stats.count_status(204)
        stats.count_status(503)
        snapshot = stats.snapshot()
        self.assertEqual(sorted(snapshot), sorted(names + ["responses"]))
        for value, name in enumerate(names, 1):
            self.assertEqual(snapshot[name], value)
        self.assertEqual(snapshot["responses"], {"1xx": 0, "2xx": 1, "3xx": 0, "4xx": 0, "5xx": 1})


def _copy_sources(destination: str) -> None:
    """
    Copy what C{setup.py} needs (metadata, the package, the plugin) to
    C{destination}, without any built extension.
    """
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO_ROOT, name), destination)
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyd")
    for tree in ("balancebeam", "twisted"):
        shutil.copytree(os.path.join(REPO_ROOT, tree), os.path.join(destination, tree),
                        ignore=ignore)


def _load_setup() -> Any:
    """
    Import the checkout's C{setup.py} as a module (it calls C{setup()} only
    when run as a script).
    """
    spec = importlib.util.spec_from_file_location(
        "_balancebeam_setup", os.path.join(REPO_ROOT, "setup.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class WhyPureTests(SynchronousTestCase):
    """
    C{setup.py} decides between mypyc and pure Python from the environment,
    the interpreter, the command and what is installed.
    """

    def setUp(self) -> None:
        self.why_pure = _load_setup().why_pure

    def test_compiled_where_possible(self) -> None:
        """
        On CPython with mypyc, a wheel build or an install is compiled;
        C{BALANCEBEAM_PURE_PYTHON=0} or empty does not prevent it.
        """
        for environ in ({}, {"BALANCEBEAM_PURE_PYTHON": "0"}, {"BALANCEBEAM_PURE_PYTHON": ""}):
            for commands in (["bdist_wheel"], ["build_ext", "--inplace"], ["install"]):
                self.assertIsNone(self.why_pure(environ, "CPython", commands, True))

    def test_each_reason_for_pure_python(self) -> None:
        """
        The switch, another interpreter, an editable install and a missing
        mypyc each make the build pure Python, saying why.
        """
        cases = [
            ({"BALANCEBEAM_PURE_PYTHON": "1"}, "CPython", ["bdist_wheel"], True,
             "BALANCEBEAM_PURE_PYTHON is set"),
            ({}, "PyPy", ["bdist_wheel"], True, "mypyc compiles for CPython only, not PyPy"),
            ({}, "CPython", ["editable_wheel", "--dist-dir", "x"], True, "an editable install"),
            ({}, "CPython", ["develop"], True, "an editable install"),
            ({}, "CPython", ["bdist_wheel"], False, "mypyc (part of mypy) is not installed"),
        ]
        for environ, implementation, commands, installed, expected in cases:
            reason = self.why_pure(environ, implementation, commands, installed)
            assert reason is not None
            self.assertIn(expected, reason)


class FallbackTests(TestCase):
    """
    C{setup.py} builds pure Python, saying why, where mypyc cannot be used.
    """

    def _build(self, **environ: str) -> tuple[str, list[str]]:
        """
        Run C{setup.py build} on a copy of the sources with C{environ}
        added, and return its error output and the extension modules it built.
        """
        tmp = tempfile.mkdtemp(prefix="balancebeam-setup-")
        self.addCleanup(shutil.rmtree, tmp, True)
        source = os.path.join(tmp, "src")
        os.mkdir(source)
        _copy_sources(source)
        out = os.path.join(tmp, "out")
        env = dict(os.environ, **environ)
        result = subprocess.run(
            [sys.executable, "setup.py", "-q", "build", "--build-lib", out,
             "--build-temp", os.path.join(tmp, "temp")],
            cwd=source, env=env, capture_output=True, text=True, timeout=600,
        )
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        built = [
            os.path.relpath(os.path.join(directory, name), out)
            for directory, _, files in os.walk(out)
            for name in files
            if name.endswith(tuple(EXTENSION_SUFFIXES))
        ]
        self.assertTrue(os.path.isfile(os.path.join(out, "balancebeam", "relay", "exchange.py")))
        return result.stderr, built

    def test_pure_python_when_asked(self) -> None:
        """
        With C{BALANCEBEAM_PURE_PYTHON=1} no extension is built, the Python
        sources are, and the build says why.
        """
        stderr, built = self._build(BALANCEBEAM_PURE_PYTHON="1")
        self.assertEqual(built, [])
        self.assertIn(
            "balancebeam: installing pure Python: BALANCEBEAM_PURE_PYTHON is set", stderr
        )

    def test_pure_python_without_a_compiler(self) -> None:
        """
        Where the C compiler does not work, the build still succeeds, with
        the Python sources only, and says why.
        """
        if platform.python_implementation() != "CPython":
            self.skipTest("mypyc is tried on CPython only; the fallback is the other test's")
        if importlib.util.find_spec("mypyc") is None:
            self.skipTest("mypy is not installed (pip install '.[dev]'): no compile is tried")
        stderr, built = self._build(CC="/bin/false", BALANCEBEAM_PURE_PYTHON="0")
        self.assertEqual(built, [])
        self.assertIn(
            "balancebeam: installing pure Python: cannot compile C extensions here", stderr
        )
