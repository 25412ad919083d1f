"""
Build the firewall the command line asks for: check, load the rules, start the threads.

The flags are parsed, and their defaults kept, in L{balancebeam.config}
(L{WafConfig <balancebeam.config.WafConfig>}); L{validate} checks the
environment without loading anything (the engine is installed, the rule
files exist); L{build_waf} loads the rules and returns a L{WafService}
whose C{filter} goes into the filter chain.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.python.threadpool import ThreadPool

from balancebeam.config_records import WafConfig
from balancebeam.waf import modsec_cffi, modsec_wheel, rules
from balancebeam.waf.engine import IInspector, RulesError
from balancebeam.waf.filter import WafCounters, WafFilter
from balancebeam.waf.runner import IInspectionRunner, ThreadedRunner, TurnTakingRunner

BINDINGS = ("auto", "cffi", "wheel")
"""The engine bindings: C{auto} takes C{cffi} when it can be loaded, else C{wheel}."""

INSTALL_HINT = (
    "install ModSecurity: apt-get install libmodsecurity3 modsecurity-crs, then "
    "pip install 'balancebeam[waf]' (for cffi); or pip install libmodsecurity "
    "(the PyPI wheel; it holds the GIL, so inspections then take turns on the reactor thread)"
)


def unavailable_reason(
    binding: str = "auto",
    library_names: Sequence[str] = modsec_cffi.LIBRARY_NAMES,
    wheel_module: str = "libmodsecurity",
) -> str | None:
    """
    Why C{--waf} cannot work on this machine, saying what to install; C{None}
    when a binding can be loaded.

    @param binding: one of L{BINDINGS}.
    @param library_names: the C libraries the C{cffi} binding tries.
    @param wheel_module: the module of the C{wheel} binding.
    """
    if binding not in BINDINGS:
        return f"WAF binding {binding!r} is not one of {', '.join(BINDINGS)}"
    reasons = []
    if binding in ("auto", "cffi"):
        reason = modsec_cffi.unavailable_reason(library_names)
        if reason is None:
            return None
        reasons.append(reason)
    if binding in ("auto", "wheel"):
        reason = modsec_wheel.unavailable_reason(wheel_module)
        if reason is None:
            return None
        reasons.append(reason)
    missing = "; ".join(reasons)
    return f"--waf needs ModSecurity, which is not installed ({missing}): {INSTALL_HINT}"


def rule_files(settings: WafConfig) -> list[str]:
    """
    The rule files to load: the expanded C{--waf-rules}, else the system CRS.

    @raise ValueError: when a pattern matches nothing or there is no CRS.
    """
    if settings.rules:
        return rules.expand_rule_patterns(settings.rules)
    return rules.system_crs_files()


def validate(settings: WafConfig) -> None:
    """
    Check the settings without loading the engine: a usage error at startup.

    @raise ValueError: naming the flag, when C{--waf} is on and the engine is
        not installed, no rules are found, or a value is out of range.
    """
    if settings.mode == "off":
        return
    reason = unavailable_reason(settings.binding)
    if reason is not None:
        raise ValueError(reason)
    rule_files(settings)


def load_inspector(settings: WafConfig) -> IInspector:
    """
    Start the engine of C{settings.binding} and load the rules into it.

    @raise RulesError: (a L{ValueError}) naming the file that failed and
        the engine's message.
    @raise ValueError: when the rules or the engine cannot be found.
    """
    sources = rules.rule_sources(
        rule_files(settings), settings.paranoia, settings.anomaly_threshold, settings.body_limit
    )
    binding = settings.binding
    if binding == "auto":
        binding = "cffi" if modsec_cffi.unavailable_reason() is None else "wheel"
    reason = unavailable_reason(binding)
    if reason is not None:
        raise ValueError(reason)
    if binding == "cffi":
        return modsec_cffi.CffiModSecurity.load(sources)
    return modsec_wheel.WheelModSecurity.load(sources)


class WafService(Service):
    """
    The firewall's running parts: the engine, where inspections run, the filter.

    Starting it starts the inspection threads (if any); stopping it lets the
    running inspections end, stops the threads and frees the engine.

    @ivar filter: the L{WafFilter} to put in the filter chain.
    @ivar counters: the filter's L{WafCounters}.
    @ivar inspector: the engine.
    """

    def __init__(
        self,
        inspector: IInspector,
        runner: IInspectionRunner,
        filter: WafFilter,
        pool: ThreadPool | None,
    ) -> None:
        self.inspector = inspector
        self.runner = runner
        self.filter = filter
        self.counters = filter.counters
        self._pool = pool
        self.setName("waf")

    def startService(self) -> None:
        """
        Start the inspection threads.
        """
        super().startService()
        if self._pool is not None:
            self._pool.start()

    def stopService(self) -> None:
        """
        Refuse new inspections, wait for running ones, free the engine.
        """
        super().stopService()
        self.runner.stop()
        if self._pool is not None:
            self._pool.stop()
        self.inspector.close()


def build_waf(
    reactor: IReactorTime, settings: WafConfig, inspector: IInspector | None = None
) -> WafService:
    """
    Build the firewall for C{settings} (whose mode is not C{off}).

    A binding that releases the GIL gets a thread pool of C{settings.threads}
    threads (L{ThreadedRunner}); one that holds it takes turns on the reactor
    thread (L{TurnTakingRunner}).

    @param reactor: the clock, and (for the thread pool) C{callFromThread}.
    @param inspector: an engine already loaded; by default L{load_inspector}.
    @raise ValueError: as L{validate} and L{load_inspector}.
    """
    if settings.mode == "off":
        raise ValueError("build_waf needs --waf detect or block")
    if inspector is None:
        validate(settings)
        inspector = load_inspector(settings)
    pool: ThreadPool | None = None
    runner: IInspectionRunner
    if inspector.releases_gil:
        pool = ThreadPool(minthreads=settings.threads, maxthreads=settings.threads, name="waf")
        runner = ThreadedRunner(
            reactor,  # type: ignore[arg-type]  # the reactor also provides IReactorFromThreads
            pool,
            settings.max_queued,
        )
    else:
        runner = TurnTakingRunner(reactor, settings.max_queued)
    waf_filter = WafFilter(inspector, runner, settings.mode, settings.body_limit)
    return WafService(inspector, runner, waf_filter, pool)


__all__ = [
    "BINDINGS",
    "RulesError",
    "WafCounters",
    "WafFilter",
    "WafService",
    "WafConfig",
    "build_waf",
    "load_inspector",
    "unavailable_reason",
    "validate",
]
