"""
The admin's bearer token: reading it, and checking requests for it.

The token is compared in constant time, never logged, and never shown in a
C{repr}. A request carries it as C{Authorization: Bearer TOKEN}; a browser
may give it as the password of HTTP basic authentication (any user name),
which it then sends with the status page's own requests too.
"""

from __future__ import annotations

import base64
import binascii
import hmac

from twisted.web.iweb import IRequest


def read_token_file(path: str) -> str:
    """
    Read the token from C{path}: its text without surrounding whitespace.

    @raise ValueError: naming the file (never the token) when it cannot be
        read, or is empty.
    """
    try:
        with open(path, encoding="utf-8") as file:
            token = file.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise ValueError(f"--admin-token-file {path!r} cannot be read: {reason}") from None
    if not token:
        raise ValueError(f"--admin-token-file {path!r} is empty")
    if any(c.isspace() for c in token):
        raise ValueError(f"--admin-token-file {path!r} must hold one token without spaces")
    return token


class AdminToken:
    """
    The token the admin requires, or none (a loopback admin without
    C{--admin-token-file}). A reload may replace it (L{replace}).
    """

    def __init__(self, token: str | None) -> None:
        self._token = token.encode("utf-8") if token is not None else None

    def __repr__(self) -> str:
        return f"<AdminToken {'set' if self._token is not None else 'none'}>"

    @property
    def required(self) -> bool:
        """
        Whether requests must carry the token.
        """
        return self._token is not None

    def replace(self, token: str | None) -> None:
        """
        Require C{token} from now on.
        """
        self._token = token.encode("utf-8") if token is not None else None

    def allows(self, request: IRequest) -> bool:
        """
        Whether C{request} may use the admin: no token is required, or it
        carries the right one.
        """
        expected = self._token
        if expected is None:
            return True
        header = request.getHeader(b"authorization")
        if header is None:
            return False
        scheme, _, credentials = header.strip().partition(b" ")
        scheme = scheme.lower()
        given = credentials.strip()
        if scheme == b"basic":
            try:
                decoded = base64.b64decode(given, validate=True)
            except (binascii.Error, ValueError):
                return False
            given = decoded.partition(b":")[2]
        elif scheme != b"bearer":
            return False
        return hmac.compare_digest(given, expected)
