"""
Rule loading order, the settings balancebeam adds, and the flags' parsing and checks.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from balancebeam.config import WafConfig
from balancebeam.waf import build, rules
from balancebeam.waf.engine import SCORE_RULE_ID, MatchCollector


def touch(path: str, text: str = "# rules\n") -> str:
    """
    Create C{path} (and its directories) holding C{text}; return it.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


class ExpandTests(SynchronousTestCase):
    """
    C{--waf-rules} values become files in the order given.
    """

    def test_files_and_globs_in_order(self) -> None:
        """
        Plain files keep their place; each glob's matches are sorted by name.
        """
        base = self.mktemp()
        setup = touch(os.path.join(base, "crs-setup.conf"))
        b = touch(os.path.join(base, "rules", "REQUEST-942-SQLI.conf"))
        a = touch(os.path.join(base, "rules", "REQUEST-901-INITIALIZATION.conf"))
        after = touch(os.path.join(base, "after.conf"))
        found = rules.expand_rule_patterns(
            [setup, os.path.join(base, "rules", "*.conf"), after]
        )
        self.assertEqual(found, [setup, a, b, after])

    def test_pattern_matching_nothing(self) -> None:
        """
        A value that matches no file is an error naming it.
        """
        missing = os.path.join(self.mktemp(), "*.conf")
        with self.assertRaises(rules.RulesNotFound) as raised:
            rules.expand_rule_patterns([missing])
        self.assertIn(missing, str(raised.exception))
        self.assertIn("--waf-rules", str(raised.exception))


class SystemCrsTests(SynchronousTestCase):
    """
    Without C{--waf-rules}, the system's CRS in Debian's order.
    """

    def test_debian_order(self) -> None:
        """
        crs-setup.conf, the REQUEST-900 exclusions, rules/*.conf, the RESPONSE-999 exclusions.
        """
        base = self.mktemp()
        crs = os.path.join(base, "share")
        r1 = touch(os.path.join(crs, "rules", "REQUEST-901-INITIALIZATION.conf"))
        r2 = touch(os.path.join(crs, "rules", "RESPONSE-980-CORRELATION.conf"))
        setup = touch(os.path.join(base, "etc", "crs-setup.conf"))
        before = touch(os.path.join(base, "etc", "before.conf"))
        after = touch(os.path.join(base, "etc", "after.conf"))
        self.assertEqual(
            rules.system_crs_files(crs, [os.path.join(base, "nope.conf"), setup], before, after),
            [setup, before, r1, r2, after],
        )

    def test_exclusion_files_optional(self) -> None:
        """
        Missing exclusion files are left out.
        """
        base = self.mktemp()
        r1 = touch(os.path.join(base, "rules", "REQUEST-901-INITIALIZATION.conf"))
        setup = touch(os.path.join(base, "crs-setup.conf"))
        self.assertEqual(
            rules.system_crs_files(base, [setup], base + "/no1", base + "/no2"), [setup, r1]
        )

    def test_no_crs_is_an_error_saying_what_to_install(self) -> None:
        """
        No CRS (or no crs-setup.conf) is an error naming the package.
        """
        base = self.mktemp()
        with self.assertRaises(rules.RulesNotFound) as raised:
            rules.system_crs_files(base, [os.path.join(base, "crs-setup.conf")])
        self.assertIn("apt-get install modsecurity-crs", str(raised.exception))
        touch(os.path.join(base, "rules", "REQUEST-901-INITIALIZATION.conf"))
        self.assertRaises(
            rules.RulesNotFound,
            rules.system_crs_files,
            base,
            [os.path.join(base, "crs-setup.conf")],
        )


class SourcesTests(SynchronousTestCase):
    """
    What balancebeam adds around the operator's rules.
    """

    def test_order(self) -> None:
        """
        Engine settings first, the CRS options just before REQUEST-901, the score rule last.
        """
        files = ["/x/crs-setup.conf", "/x/rules/REQUEST-901-INITIALIZATION.conf", "/x/more.conf"]
        sources = rules.rule_sources(files, 2, 7, 1000)
        self.assertEqual(
            [s.name for s in sources],
            [
                rules.ENGINE_SETTINGS_NAME,
                "/x/crs-setup.conf",
                rules.CRS_OPTIONS_NAME,
                "/x/rules/REQUEST-901-INITIALIZATION.conf",
                "/x/more.conf",
                rules.SCORE_RULE_NAME,
            ],
        )
        self.assertEqual(
            [s.text is None for s in sources], [False, True, False, True, True, False]
        )

    def test_options_first_without_crs(self) -> None:
        """
        Without a REQUEST-901 file the options come before all the operator's files.
        """
        sources = rules.rule_sources(["/mine.conf"], 1, 5, 10)
        self.assertEqual(
            [s.name for s in sources],
            [
                rules.ENGINE_SETTINGS_NAME,
                rules.CRS_OPTIONS_NAME,
                "/mine.conf",
                rules.SCORE_RULE_NAME,
            ],
        )

    def test_options_text(self) -> None:
        """
        The paranoia level and threshold are set under the CRS v3 and v4 names.
        """
        text = rules.crs_options(3, 12)
        for setting in (
            "tx.paranoia_level=3",
            "tx.executing_paranoia_level=3",
            "tx.blocking_paranoia_level=3",
            "tx.detection_paranoia_level=3",
            "tx.inbound_anomaly_score_threshold=12",
        ):
            self.assertIn(f"setvar:{setting}", text)
        self.assertIn(f"id:{rules.OPTIONS_RULE_ID},phase:1", text)

    def test_engine_settings(self) -> None:
        """
        The engine reads bodies up to the limit and uses a high PCRE match limit.
        """
        text = rules.engine_settings(4096)
        for line in (
            "SecRuleEngine On",
            "SecRequestBodyAccess On",
            "SecRequestBodyLimit 4096",
            "SecPcreMatchLimit 500000",
            "SecPcreMatchLimitRecursion 500000",
            "SecArgumentsLimit 1000",
            "SecResponseBodyAccess Off",
        ):
            self.assertIn(line + "\n", text)

    def test_reserved_ids(self) -> None:
        """
        Every rule id balancebeam writes is in its reserved range.
        """
        text = rules.engine_settings(1) + rules.crs_options(1, 5) + rules.score_rule()
        ids = [int(part.split(",")[0]) for part in text.split("id:")[1:]]
        self.assertEqual(len(ids), 8)
        self.assertTrue(all(i in rules.RESERVED_RULE_IDS for i in ids), ids)


class CollectorTests(SynchronousTestCase):
    """
    Reading rule matches out of ModSecurity's log lines.
    """

    def test_log_lines(self) -> None:
        """
        Rule ids and messages in order, without repeats; the score from the score rule.
        """
        collector = MatchCollector()
        collector.add_log_line(
            'ModSecurity: Warning. Matched "x" [file "f"] [line "1"] [id "942100"] '
            '[rev ""] [msg "SQL Injection Attack Detected via libinjection"] [data "d"]'
        )
        collector.add_log_line('ModSecurity: Warning. [id "942100"] [msg "again"]')
        collector.add_log_line(f'ModSecurity: Warning. [id "{SCORE_RULE_ID}"] [data "8"]')
        collector.add_log_line("a line without an id")
        verdict = collector.verdict(None)
        self.assertEqual(verdict.rule_ids, (942100,))
        self.assertEqual(verdict.messages, ("SQL Injection Attack Detected via libinjection",))
        self.assertEqual(verdict.anomaly_score, 8)
        self.assertTrue(verdict.matched)

    def test_total_score_from_blocking_rule(self) -> None:
        """
        The CRS blocking rule's message gives the score when the score rule did not run.
        """
        collector = MatchCollector()
        collector.add_log_line(
            'ModSecurity: Access denied with code 403 (phase 2). [id "949110"] '
            '[msg "Inbound Anomaly Score Exceeded (Total Score: 15)"]'
        )
        verdict = collector.verdict(403)
        self.assertEqual((verdict.status, verdict.rule_ids, verdict.anomaly_score),
                         (403, (949110,), 15))


class FlagTests(SynchronousTestCase):
    """
    Checking the C{--waf*} settings (their values are parsed in
    L{balancebeam.config}; see C{tests.test_config}).
    """

    def test_defaults(self) -> None:
        """
        Off, paranoia 1, threshold 5, 128 KiB of body, the system CRS.
        """
        settings = WafConfig()
        self.assertEqual(
            (settings.mode, settings.paranoia, settings.anomaly_threshold, settings.body_limit,
             settings.rules, settings.binding),
            ("off", 1, 5, 131072, (), "auto"),
        )

    def test_off_needs_nothing(self) -> None:
        """
        With C{--waf off} nothing is checked, even rules that do not exist.
        """
        build.validate(WafConfig(mode="off", rules=("/nonexistent/*.conf",)))

    def test_missing_rules_are_a_usage_error(self) -> None:
        """
        With the firewall on, a C{--waf-rules} matching nothing is an error naming it.
        """
        if build.unavailable_reason() is not None:
            self.skipTest("needs an engine: bash .ci/install-waf.sh")
        with self.assertRaises(ValueError) as raised:
            build.validate(WafConfig(mode="block", rules=("/nonexistent/x.conf",)))
        self.assertIn("/nonexistent/x.conf", str(raised.exception))

    def test_engine_missing_says_what_to_install(self) -> None:
        """
        Without either binding the message names the apt and pip packages.
        """
        reason = build.unavailable_reason(
            "auto", library_names=("libnosuchmodsecurity.so.9",), wheel_module="nosuchmodule_x"
        )
        assert reason is not None
        for words in (
            "--waf needs ModSecurity",
            "libnosuchmodsecurity.so.9",
            "nosuchmodule_x",
            "apt-get install libmodsecurity3 modsecurity-crs",
            "pip install 'balancebeam[waf]'",
            "pip install libmodsecurity",
        ):
            self.assertIn(words, reason)

    def test_one_binding_missing(self) -> None:
        """
        Asking for the cffi binding alone reports only its own problem.
        """
        reason = build.unavailable_reason("cffi", library_names=("libnosuchmodsecurity.so.9",))
        assert reason is not None
        self.assertIn("libnosuchmodsecurity.so.9", reason)
        self.assertNotIn("cannot be imported", reason)
        self.assertIn("not one of", build.unavailable_reason("rust") or "")
