"""
Exceptions for expected runtime failures; each maps to an HTTP status.
"""

from __future__ import annotations


class BalancerError(Exception):
    """
    A failure that ends one request with a balancer-generated answer.

    @cvar status: the HTTP status the client gets.
    """

    status = 502

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UpstreamDown(BalancerError):
    """
    The upstream went down while the request waited for it.
    """

    status = 502


class QueueTimeout(BalancerError):
    """
    The upstream stayed at its connection cap for longer than the queue timeout.
    """

    status = 503


class StartupError(Exception):
    """
    The balancer cannot start with this configuration, for a reason found
    while building it (a rule file that fails to load, say): twistd prints
    the message on one line and exits with status 1.
    """
