"""
What C{pip install .} puts in place.
"""

from __future__ import annotations

import configparser
import os

from twisted.trial.unittest import SynchronousTestCase

import balancebeam

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(balancebeam.__file__)))


class PackagesTests(SynchronousTestCase):
    """
    The distribution lists every package of the source tree.
    """

    def test_every_package_is_installed(self) -> None:
        """
        Each directory of C{balancebeam/} holding an C{__init__.py} is in
        C{setup.cfg}'s C{packages}, so an installed balancebeam is whole.
        """
        parser = configparser.ConfigParser()
        parser.read(os.path.join(REPO_ROOT, "setup.cfg"))
        listed = set(parser["options"]["packages"].split())
        found = set()
        for directory, _, files in os.walk(os.path.join(REPO_ROOT, "balancebeam")):
            if "__init__.py" in files and "__pycache__" not in directory:
                relative = os.path.relpath(directory, REPO_ROOT)
                found.add(relative.replace(os.sep, "."))
        self.assertEqual(found - listed, set())
        self.assertIn("twisted.plugins", listed)
