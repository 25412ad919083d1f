# -*- test-case-name: tests.test_admin -*-
"""
What a web page can make a browser send to the admin, and how the admin
tells: L{cross_site} (a form or script on another site posting to it) and
L{names_loopback} (DNS rebinding).

A loopback admin without a token trusts whoever can reach it, which is this
machine, browsers included. A page on C{attacker.example} cannot post to it
across sites (L{cross_site}), but it can rebind its own name to 127.0.0.1:
its script then talks to the admin as C{attacker.example:PORT}, same-origin
in the browser's eyes. The browser's C{Host} still names the attacker's
site, so the admin answers a request without the token only when its
C{Host} names a loopback address (L{names_loopback}). A token-protected
admin needs neither: a browser does not send a site's credentials to
another site.
"""

from __future__ import annotations

import re
from typing import Final

from twisted.web.iweb import IRequest

from balancebeam.config_addresses import is_loopback_host

PROBE_PATHS: Final = frozenset({b"/healthz", b"/ready"})
"""
Paths answered whatever the C{Host}: liveness and readiness, which probes
may ask by any name, and which tell a page nothing worth rebinding for.
"""

_HOST: Final = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%!$&'()*+,;=-]+)(?::[0-9]*)?")
"""A C{Host} value: a name, an IPv4 or a bracketed IPv6 literal, a port."""


def cross_site(request: IRequest) -> bool:
    """
    Whether a browser sent C{request} from another site (a form or script
    on a page elsewhere aiming at a loopback admin).
    """
    if request.getHeader(b"sec-fetch-site") in (b"cross-site", b"same-site"):
        return True
    origin = request.getHeader(b"origin")
    if origin is None or origin == b"null":
        return origin == b"null"
    host = request.getHeader(b"host") or b""
    return origin.partition(b"://")[2] != host


def names_loopback(request: IRequest) -> bool:
    """
    Whether C{request}'s C{Host} names this machine by a loopback address:
    C{localhost} (in any case, with or without a final dot) or an IP
    literal in 127.0.0.0/8 or C{[::1]}, with any port or none. A request
    without C{Host} passes too (every browser sends one); one with two does
    not.
    """
    values = request.requestHeaders.getRawHeaders(b"host")
    if values is None:
        return True
    if len(values) != 1:
        return False
    matched = _HOST.fullmatch(values[0].strip())
    if matched is None:
        return False
    name = matched[1]
    if name.startswith(b"["):
        name = name[1:-1]
        if b":" not in name:
            return False
    return is_loopback_host(name.decode("ascii"))
