"""
All the cores (issue 14): a master process and worker processes that share
the listening sockets.

With C{--workers N} (N > 1) the twistd process is a master
(L{balancebeam.workers.master}) that serves no request itself: it binds the
listening sockets (or takes them from systemd), starts N worker processes
(L{balancebeam.workers.worker}) that accept connections on those same
sockets, replaces a worker that dies, starts a new generation on SIGHUP and
drains them all on SIGTERM. The master probes the upstreams
(L{balancebeam.workers.health}) and tells every worker what it found; a
worker that sees an upstream fail tells the master, which tells the others.
They talk over a pipe each way (L{balancebeam.workers.control}), and share
one page of memory in which each worker publishes how many connections it
holds, so that the busiest one steps back from accepting
(L{balancebeam.workers.accept}).

See C{doc/workers.md}.
"""
