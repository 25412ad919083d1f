#!/usr/bin/env bash
# Install what the WAF tests (tests/test_waf_*.py) need, idempotently; fail loudly if it cannot.
#   - Debian's libmodsecurity3 (the engine the cffi binding loads) and modsecurity-crs
#     (OWASP CRS v3.3.4 under /usr/share/modsecurity-crs, crs-setup.conf in /etc/modsecurity/crs);
#   - cffi (the binding) and the PyPI libmodsecurity wheel (the alternative binding, whose
#     PCRE-limit behaviour the tests check).
# Then check that both bindings load and the system CRS is found.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
missing=()
for pkg in libmodsecurity3 modsecurity-crs; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-waf: apt-get install ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
  'cffi >= 1.15, < 3' 'libmodsecurity >= 3.0.15, < 3.1'

python3 - <<'PY'
import sys

from balancebeam.waf import build, rules

problems = [
    reason
    for reason in (build.unavailable_reason("cffi"), build.unavailable_reason("wheel"))
    if reason is not None
]
try:
    files = rules.system_crs_files()
except ValueError as e:
    problems.append(str(e))
if problems:
    print("install-waf: FAILED:", *problems, sep="\n  ", file=sys.stderr)
    sys.exit(1)
print(f"install-waf: both bindings load; system CRS has {len(files)} files")
PY
