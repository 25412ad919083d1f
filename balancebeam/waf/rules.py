"""
Which rules the firewall loads, in which order, and the settings balancebeam adds.

The order is: balancebeam's engine settings (L{engine_settings}), then the
operator's C{--waf-rules} files (each glob expanded and sorted) or else the
system's Core Rule Set (L{system_crs_files}), with balancebeam's paranoia
level and anomaly threshold (L{crs_options}) set just before the CRS reads
them in C{REQUEST-901-INITIALIZATION.conf}, and last the rule that reports the
anomaly score. Everything here is pure apart from reading directory listings.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

from balancebeam.waf.engine import SCORE_RULE_ID, RuleSource

SYSTEM_CRS_DIR = "/usr/share/modsecurity-crs"
"""Where Debian's C{modsecurity-crs} puts the Core Rule Set."""

SYSTEM_CRS_SETUP = ("/etc/modsecurity/crs/crs-setup.conf", f"{SYSTEM_CRS_DIR}/crs-setup.conf")
"""Where the CRS's C{crs-setup.conf} is looked for, in order."""

SYSTEM_CRS_BEFORE = "/etc/modsecurity/crs/REQUEST-900-EXCLUSION-RULES-BEFORE-CRS.conf"
SYSTEM_CRS_AFTER = "/etc/modsecurity/crs/RESPONSE-999-EXCLUSION-RULES-AFTER-CRS.conf"
"""The operator's exclusion files Debian loads before and after the CRS, if present."""

PCRE_MATCH_LIMIT = 500_000
"""
C{SecPcreMatchLimit} and C{SecPcreMatchLimitRecursion}. ModSecurity's
recommended 1000 makes the engine silently skip some CRS patterns on long
inputs (no error is reported); at 500000 they match again.
"""

OPTIONS_RULE_ID = 99901
"""The id of the rule that sets the CRS paranoia level and anomaly threshold."""

RESERVED_RULE_IDS = range(99900, 99920)
"""Rule ids balancebeam uses; an operator's rules must not."""

ENGINE_SETTINGS_NAME = "<balancebeam engine settings>"
CRS_OPTIONS_NAME = "<balancebeam paranoia level and anomaly threshold>"
SCORE_RULE_NAME = "<balancebeam anomaly score report>"


class RulesNotFound(ValueError):
    """
    No rules to load: a C{--waf-rules} pattern matched nothing, or no CRS is installed.
    """


def expand_rule_patterns(patterns: Sequence[str]) -> list[str]:
    """
    Turn C{--waf-rules} values into files, in the order given.

    Each value is a file or a glob; a glob's matches are sorted by name (the
    CRS's file names sort into their loading order).

    @raise RulesNotFound: naming a value that matches no file.
    """
    files: list[str] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            found = sorted(p for p in glob.glob(pattern) if os.path.isfile(p))
        else:
            found = [pattern] if os.path.isfile(pattern) else []
        if not found:
            raise RulesNotFound(f"--waf-rules {pattern!r} matches no file")
        files.extend(found)
    return files


def system_crs_files(
    crs_dir: str = SYSTEM_CRS_DIR,
    setup_candidates: Sequence[str] = SYSTEM_CRS_SETUP,
    before: str = SYSTEM_CRS_BEFORE,
    after: str = SYSTEM_CRS_AFTER,
) -> list[str]:
    """
    The files of the system's Core Rule Set, in Debian's loading order
    (C{owasp-crs.load}): C{crs-setup.conf}, the C{REQUEST-900} exclusions if
    present, C{rules/*.conf}, the C{RESPONSE-999} exclusions if present.

    @raise RulesNotFound: when there is no CRS or no C{crs-setup.conf}.
    """
    rules = sorted(glob.glob(os.path.join(glob.escape(crs_dir), "rules", "*.conf")))
    setup = [path for path in setup_candidates if os.path.isfile(path)]
    if not rules or not setup:
        raise RulesNotFound(
            f"no --waf-rules given and no OWASP Core Rule Set with a crs-setup.conf "
            f"under {crs_dir} (Debian: apt-get install modsecurity-crs)"
        )
    files = [setup[0]]
    if os.path.isfile(before):
        files.append(before)
    files.extend(rules)
    if os.path.isfile(after):
        files.append(after)
    return files


ARGUMENTS_LIMIT = 1000
"""The most arguments the engine parses; a request with more is refused (400),
as ModSecurity's recommended C{SecArgumentsLimit} and rule 200007: thousands
of small arguments cost the CRS seconds per request (measured: 12,000 in a
125 KB form took 2 s of engine time, against 12 ms refused)."""


def engine_settings(body_limit: int) -> str:
    """
    The engine directives balancebeam needs, loaded before any rule.

    The engine blocks (the filter decides what to do with its verdict), reads
    request bodies up to C{body_limit} (the filter never hands it more), has
    no audit log, does not look at responses, and uses the body processors
    and body error rules of ModSecurity's C{modsecurity.conf-recommended}
    (renumbered into balancebeam's ids).
    """
    limit = max(body_limit, 1)
    return f"""\
SecRuleEngine On
SecRequestBodyAccess On
SecRequestBodyLimit {limit}
SecRequestBodyNoFilesLimit {limit}
SecRequestBodyLimitAction ProcessPartial
SecResponseBodyAccess Off
SecPcreMatchLimit {PCRE_MATCH_LIMIT}
SecPcreMatchLimitRecursion {PCRE_MATCH_LIMIT}
SecArgumentSeparator &
SecArgumentsLimit {ARGUMENTS_LIMIT}
SecCookieFormat 0
SecAuditEngine Off
SecDebugLogLevel 0
SecRule REQUEST_HEADERS:Content-Type "@rx (?:application(?:/soap\\+|/)|text/)xml" \\
    "id:99910,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=XML"
SecRule REQUEST_HEADERS:Content-Type "@rx application/json" \\
    "id:99911,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=JSON"
SecRule REQBODY_ERROR "!@eq 0" \\
    "id:99912,phase:2,t:none,log,deny,status:400,msg:'Failed to parse request body.',\\
    logdata:'%{{reqbody_error_msg}}',severity:2"
SecRule MULTIPART_STRICT_ERROR "!@eq 0" \\
    "id:99913,phase:2,t:none,log,deny,status:400,\\
    msg:'Multipart request body failed strict validation'"
SecRule MULTIPART_UNMATCHED_BOUNDARY "@eq 1" \\
    "id:99914,phase:2,t:none,log,deny,status:400,\\
    msg:'Multipart parser detected a possible unmatched boundary.'"
SecRule &ARGS "@ge {ARGUMENTS_LIMIT}" \\
    "id:99915,phase:2,t:none,log,deny,status:400,\\
    msg:'Failed to fully parse request body due to large argument count',severity:2"
"""


def crs_options(paranoia: int, threshold: int) -> str:
    """
    The CRS's own variables for C{--waf-paranoia} and C{--waf-anomaly-threshold},
    under their CRS v3 and v4 names, set in phase 1 before the CRS initialises.
    """
    return (
        f'SecAction "id:{OPTIONS_RULE_ID},phase:1,pass,nolog,t:none,'
        f"setvar:tx.paranoia_level={paranoia},"
        f"setvar:tx.executing_paranoia_level={paranoia},"
        f"setvar:tx.blocking_paranoia_level={paranoia},"
        f"setvar:tx.detection_paranoia_level={paranoia},"
        f'setvar:tx.inbound_anomaly_score_threshold={threshold}"\n'
    )


def score_rule() -> str:
    """
    A rule run after all others that logs the inbound anomaly score when it
    is above 0 (C{TX:ANOMALY_SCORE} in CRS v3, C{TX:BLOCKING_INBOUND_ANOMALY_SCORE}
    in v4), so that matches under the threshold are reported with their score.
    """
    return (
        "SecRule TX:ANOMALY_SCORE|TX:BLOCKING_INBOUND_ANOMALY_SCORE \"@gt 0\" "
        f"\"id:{SCORE_RULE_ID},phase:2,pass,log,t:none,"
        "msg:'balancebeam: inbound anomaly score',logdata:'%{MATCHED_VAR}'\"\n"
    )


def rule_sources(
    files: Sequence[str], paranoia: int, threshold: int, body_limit: int
) -> list[RuleSource]:
    """
    Everything the engine loads, in order: the engine settings, C{files} with
    the CRS options inserted before the first C{REQUEST-901*} file (or before
    all files when there is none), and the score rule.
    """
    options = RuleSource(CRS_OPTIONS_NAME, crs_options(paranoia, threshold))
    init_at = next(
        (i for i, path in enumerate(files) if os.path.basename(path).startswith("REQUEST-901")),
        0,
    )
    sources = [RuleSource(ENGINE_SETTINGS_NAME, engine_settings(body_limit))]
    sources.extend(RuleSource(path) for path in files[:init_at])
    sources.append(options)
    sources.extend(RuleSource(path) for path in files[init_at:])
    sources.append(RuleSource(SCORE_RULE_NAME, score_rule()))
    return sources
