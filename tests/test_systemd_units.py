"""
The shipped unit files (C{contrib/systemd/}): C{systemd-analyze verify}
accepts them without a warning, their hardening scores well, and the
configuration check their C{ExecReload} runs passes on the example file.

Without C{systemd-analyze} the verification is skipped, except in CI (C{CI}
set), where that is a failure: C{.ci/run} installs systemd.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.test_twistd import REPO_ROOT, TWISTD

UNITS = os.path.join(REPO_ROOT, "contrib", "systemd")


def unit_lines(name: str, key: str) -> list[str]:
    """
    The values of C{key} in unit file C{name}, continuation lines joined.
    """
    with open(os.path.join(UNITS, name), encoding="utf-8") as file:
        text = file.read().replace("\\\n", " ")
    return [
        line.partition("=")[2].strip() for line in text.splitlines() if line.startswith(key + "=")
    ]


class UnitFileTests(SynchronousTestCase):
    """
    C{balancebeam.service} and C{balancebeam.socket}.
    """

    def test_verify(self) -> None:
        """
        C{contrib/systemd/verify.sh} (C{systemd-analyze verify}, then the
        security score) passes.
        """
        if shutil.which("systemd-analyze") is None:
            reason = "systemd-analyze is not installed (apt-get install systemd)"
            if os.environ.get("CI"):
                raise RuntimeError(f"{reason}; in CI the unit files must be verified")
            raise SkipTest(reason)
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        if not os.access(twistd, os.X_OK):
            twistd = shutil.which("twistd") or "/bin/true"
        result = subprocess.run(
            ["bash", os.path.join(UNITS, "verify.sh"), twistd],
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("balancebeam.service and balancebeam.socket OK", result.stdout)

    def test_service_is_notify_with_watchdog(self) -> None:
        """
        The service is C{Type=notify} with a watchdog, takes its socket from
        the socket unit, and reloads by checking then sending C{SIGHUP}.
        """
        self.assertEqual(unit_lines("balancebeam.service", "Type"), ["notify"])
        self.assertEqual(unit_lines("balancebeam.service", "WatchdogSec"), ["30"])
        self.assertEqual(unit_lines("balancebeam.service", "Requires"), ["balancebeam.socket"])
        [check, hup] = unit_lines("balancebeam.service", "ExecReload")
        self.assertTrue(check.endswith("--check-config"), check)
        self.assertEqual(hup, "/bin/kill -HUP $MAINPID")
        self.assertEqual(unit_lines("balancebeam.socket", "FileDescriptorName"), ["http"])

    def test_reload_check_passes_on_example(self) -> None:
        """
        The check C{ExecReload} runs accepts the example configuration, with
        its C{systemd:} listener, where systemd passes no socket.
        """
        [check, _] = unit_lines("balancebeam.service", "ExecReload")
        arguments = shlex.split(check)[1:]
        config = arguments.index("--config")
        arguments[config + 1] = os.path.join(UNITS, "balancebeam.toml")
        environment = dict(os.environ, PYTHONPATH=REPO_ROOT)
        result = subprocess.run(
            [sys.executable, *TWISTD[1:], *arguments],
            capture_output=True,
            text=True,
            timeout=120,
            env=environment,
            cwd=REPO_ROOT,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("configuration OK", result.stdout)
        self.assertIn("listening on systemd:domain=INET:name=http", result.stdout)
