"""
The extension build of balancebeam (issue 15); the metadata is in setup.cfg.

On CPython, the modules of C{balancebeam.compiled.COMPILED_MODULES} are
compiled with mypyc (mypy is a build requirement in pyproject.toml). The
build falls back to pure Python, which behaves the same, when:

  - C{BALANCEBEAM_PURE_PYTHON} is set to anything but C{""} or C{"0"};
  - the interpreter is not CPython (PyPy);
  - the install is editable (C{pip install -e}), where extension modules
    beside the sources would hide every later edit of them;
  - mypyc cannot be imported, or rejects the sources;
  - no working C compiler, or no Python headers (C{Python.h}), is found;
  - compiling or linking fails.

Each fallback prints one C{balancebeam:} line saying why. An in-place
build for the tests (C{.ci/run} does this)::

    python3 setup.py build_ext --inplace    # *.so beside the sources
    python3 setup.py clean_compiled         # removes them again
"""

from __future__ import annotations

import glob
import importlib.util
import os
import platform
import shutil
import sys
import tempfile
from typing import Any

from setuptools import Command, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


def _load_compiled_module() -> Any:
    """
    Load C{balancebeam/compiled.py} on its own (standard library only), so
    that the list of modules lives in one place.
    """
    path = os.path.join(ROOT, "balancebeam", "compiled.py")
    spec = importlib.util.spec_from_file_location("_balancebeam_compiled", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


COMPILED = _load_compiled_module()


def say(message: str) -> None:
    """
    One line on stderr, which pip shows with C{-v} and on failures.
    """
    print(f"balancebeam: {message}", file=sys.stderr, flush=True)


#: The setuptools commands of an editable install (C{pip install -e}).
EDITABLE_COMMANDS = frozenset({"develop", "editable_wheel"})


def why_pure(
    environ: dict[str, str] | os._Environ[str],
    implementation: str,
    commands: list[str],
    mypyc_installed: bool,
) -> str | None:
    """
    Why this build must be pure Python, or C{None} when mypyc may be tried.

    @param environ: the environment (C{BALANCEBEAM_PURE_PYTHON}).
    @param implementation: C{platform.python_implementation()}.
    @param commands: the setup.py arguments (C{sys.argv[1:]}).
    @param mypyc_installed: whether C{mypyc} can be imported.
    """
    if environ.get(COMPILED.PURE_PYTHON_VARIABLE, "").strip() not in ("", "0"):
        return f"{COMPILED.PURE_PYTHON_VARIABLE} is set"
    if implementation != "CPython":
        return f"mypyc compiles for CPython only, not {implementation}"
    if EDITABLE_COMMANDS.intersection(commands):
        return ("an editable install keeps the sources live (build in place with "
                "'python3 setup.py build_ext --inplace' to try the compiled modules)")
    if not mypyc_installed:
        return "mypyc (part of mypy) is not installed"
    return None


def mypyc_extensions() -> list[Any]:
    """
    The mypyc extension modules, or none when the build is pure Python.
    """
    reason = why_pure(os.environ, platform.python_implementation(), sys.argv[1:],
                      importlib.util.find_spec("mypyc") is not None)
    if reason is not None:
        say(f"installing pure Python: {reason}")
        return []
    from mypyc.build import mypycify

    paths = [COMPILED.module_path(name) for name in COMPILED.COMPILED_MODULES]
    cwd = os.getcwd()
    os.chdir(ROOT)  # mypy finds setup.cfg's [mypy] section (the mypy-zope plugin) here
    try:
        return list(mypycify(paths, opt_level="3", debug_level="0"))
    except (Exception, SystemExit) as error:  # mypy reports errors by exiting
        say(f"installing pure Python: mypyc could not compile the modules ({error!r})")
        return []
    finally:
        os.chdir(cwd)


class OptionalBuildExt(build_ext):
    """
    C{build_ext} that builds every mypyc extension or none: without a
    working compiler and C{Python.h}, or when a compile fails, it removes
    what it built and leaves the pure Python modules in place.
    """

    def build_extensions(self) -> None:
        """
        Check the compiler on a tiny C file including C{Python.h}, then build.
        """
        problem = self._compiler_problem()
        if problem is not None:
            say(f"installing pure Python: cannot compile C extensions here ({problem})")
            self.extensions = []
            return
        try:
            super().build_extensions()
        except Exception as error:  # CCompilerError, CompileError, LinkError, OSError
            say(f"installing pure Python: building the mypyc extensions failed ({error})")
            self._remove_outputs()
            self.extensions = []

    def _compiler_problem(self) -> str | None:
        """
        Compile C{#include <Python.h>}; say what failed, or C{None}.
        """
        tmp = tempfile.mkdtemp(prefix="balancebeam-cc-")
        try:
            source = os.path.join(tmp, "probe.c")
            with open(source, "w") as handle:
                handle.write("#include <Python.h>\nint balancebeam_probe(void) { return 0; }\n")
            self.compiler.compile([source], output_dir=tmp, include_dirs=self.include_dirs)
        except Exception as error:
            return str(error).strip().splitlines()[-1] if str(error).strip() else repr(error)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return None

    def _remove_outputs(self) -> None:
        """
        Delete the extension files already built, so that no half build is
        installed (a shim whose shared library is missing would not import).
        """
        for extension in self.extensions:
            path = self.get_ext_fullpath(extension.name)
            if os.path.exists(path):
                os.remove(path)


class CleanCompiled(Command):
    """
    C{python3 setup.py clean_compiled}: remove the extension modules of an
    in-place build, so that the checkout runs pure Python again.
    """

    description = "remove in-place mypyc builds (*.so) from the source tree"
    user_options: list[tuple[str, str | None, str]] = []

    def initialize_options(self) -> None:
        """
        No options.
        """

    def finalize_options(self) -> None:
        """
        No options.
        """

    def run(self) -> None:
        """
        Remove C{balancebeam/**/*.so} (and C{.pyd}) and the shared mypyc library.
        """
        patterns = ("balancebeam/**/*.so", "balancebeam/**/*.pyd", "*__mypyc*.so", "*__mypyc*.pyd")
        for pattern in patterns:
            for path in glob.glob(os.path.join(ROOT, pattern), recursive=True):
                say(f"removing {os.path.relpath(path, ROOT)}")
                os.remove(path)


if __name__ == "__main__":  # as setuptools runs it; tests import it for why_pure
    setup(
        ext_modules=[] if "clean_compiled" in sys.argv[1:] else mypyc_extensions(),
        cmdclass={"build_ext": OptionalBuildExt, "clean_compiled": CleanCompiled},
    )
