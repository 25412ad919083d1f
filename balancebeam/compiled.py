"""
Which of balancebeam's modules run compiled with mypyc (issue 15).

C{pip install .} compiles the modules of L{COMPILED_MODULES} with mypyc on
CPython when a C compiler and the Python headers are there (C{setup.py}
reads the list from this file), and installs them as pure Python otherwise,
on PyPy, or when C{BALANCEBEAM_PURE_PYTHON=1} is set at build time. Both
builds behave the same; the compiled one spends less CPU per request.

This module only reports what is in use (the startup log line shows
L{describe_build}); it imports nothing of its own at import time, so
C{setup.py} can load it without the project's dependencies.
"""

from __future__ import annotations

import importlib
from importlib.machinery import EXTENSION_SUFFIXES

#: The build-time switch read by C{setup.py}: any value but C{""} and C{"0"}
#: installs pure Python even where mypyc could compile.
PURE_PYTHON_VARIABLE = "BALANCEBEAM_PURE_PYTHON"

#: The modules on the request path, compiled by mypyc when the build can.
COMPILED_MODULES: tuple[str, ...] = (
    "balancebeam.http1.framing",
    "balancebeam.http1.heads",
    "balancebeam.http1.rewrite",
    "balancebeam.relay.body",
    "balancebeam.relay.client",
    "balancebeam.relay.deadlines",
    "balancebeam.relay.detached",
    "balancebeam.relay.exchange",
    "balancebeam.relay.exchange_core",
    "balancebeam.relay.exchange_events",
    "balancebeam.relay.factory",
    "balancebeam.relay.filtering",
    "balancebeam.relay.settings",
    "balancebeam.relay.states",
    "balancebeam.relay.upstream",
    "balancebeam.clientip",
    "balancebeam.filters",
    "balancebeam.pool",
    "balancebeam.ratelimit.filter",
    "balancebeam.ratelimit.memory",
    "balancebeam.registry",
    "balancebeam.routing",
    "balancebeam.stats",
    "balancebeam.strategies",
    "balancebeam.twisted_internals",
)


def module_path(name: str) -> str:
    """
    The source path of a module of L{COMPILED_MODULES}, relative to the
    project root and with C{/} separators (what C{mypycify} takes).
    """
    return name.replace(".", "/") + ".py"


def is_compiled(name: str) -> bool:
    """
    Whether module C{name} is loaded from an extension module (a mypyc
    build) rather than from Python source. Imports the module.
    """
    path = getattr(importlib.import_module(name), "__file__", None) or ""
    return path.endswith(tuple(EXTENSION_SUFFIXES))


def compiled_modules() -> list[str]:
    """
    The modules of L{COMPILED_MODULES} that are in use compiled.
    """
    return [name for name in COMPILED_MODULES if is_compiled(name)]


def describe_build() -> str:
    """
    One phrase for the startup log: C{"compiled with mypyc (23 modules)"},
    C{"pure Python"}, or, for a mixed tree (a partial in-place build),
    C{"partly compiled (3 of 23 modules: ...)"}.
    """
    compiled = compiled_modules()
    if not compiled:
        return "pure Python"
    if len(compiled) == len(COMPILED_MODULES):
        return f"compiled with mypyc ({len(compiled)} modules)"
    return (
        f"partly compiled ({len(compiled)} of {len(COMPILED_MODULES)} modules: "
        f"{', '.join(compiled)})"
    )
