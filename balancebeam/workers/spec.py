# -*- test-case-name: tests.test_workers_worker -*-
"""
What the master tells a worker when it starts it: a L{WorkerSpec}, as JSON
on the worker's command line (C{--spec}), with a L{ListenerFd} for each
listening socket it is given.

The master fills it in (L{balancebeam.workers.master}); the worker reads it
(L{balancebeam.workers.worker}).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class ListenerFd:
    """
    One listening socket handed to a worker.

    @ivar fd: its descriptor in the worker.
    @ivar family: C{AF_INET} or C{AF_INET6}.
    @ivar description: the endpoint as configured, for logs, and to build
        the TLS context of an C{ssl:} endpoint.
    @ivar tls: whether it is an C{ssl:} endpoint (C{--listen}): TLS with
        the context that endpoint describes.
    @ivar https: whether it is an HTTPS listener (C{--tls-bind}): TLS with
        the worker's certificate store (SNI), for its HTTPS factory.
    """

    fd: int
    family: int
    description: str
    tls: bool = False
    https: bool = False


@dataclass(frozen=True)
class WorkerSpec:
    """
    Everything a worker is told when it starts (as JSON on its command line).

    @ivar values: option values for L{balancebeam.config.build_config};
        listeners are in L{listeners}, not here.
    @ivar listeners: the listening sockets.
    @ivar slot: its place among the workers of its generation (0 to N-1).
    @ivar generation: 1 for the first workers, one more after each reload.
    @ivar seat: its seat in the L{SeatTable}.
    @ivar seat_fd: the table's descriptor, or C{None} with C{--reuse-port}
        (each worker has its own socket; the kernel balances).
    @ivar control_in: the descriptor the master writes to.
    @ivar control_out: the descriptor the master reads.
    @ivar stats_interval: seconds between two reports of the counters.
    @ivar reactor: the module whose C{install()} installs the master's
        reactor, or C{None} for the default one.
    @ivar logger: twistd's C{--logger} (a log observer factory), or C{None}.
    @ivar logfile: twistd's C{--logfile}, or C{None} for standard output.
    """

    values: Mapping[str, object]
    listeners: tuple[ListenerFd, ...]
    slot: int = 0
    generation: int = 1
    seat: int = 0
    seat_fd: int | None = None
    control_in: int = 0
    control_out: int = 3
    stats_interval: float = 1.0
    reactor: str | None = None
    logger: str | None = None
    logfile: str | None = None

    def to_json(self) -> str:
        """
        The spec as one line of JSON (L{from_json} reads it back).
        """
        record = dataclasses.asdict(self)
        record["values"] = dict(self.values)
        return json.dumps(record, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        """
        Read a spec written by L{to_json}.

        @raise ValueError: when C{text} is not one.
        """
        try:
            record = json.loads(text)
            listeners = tuple(ListenerFd(**item) for item in record.pop("listeners"))
            return cls(listeners=listeners, **record)
        except (TypeError, KeyError, AttributeError) as error:
            raise ValueError(f"not a worker spec: {error}") from None
