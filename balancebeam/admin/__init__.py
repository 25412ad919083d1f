"""
The admin listener (C{--admin-bind}): Prometheus metrics, a status page and
its JSON, liveness and readiness, and control endpoints (drain, disable and
enable an upstream; purge the cache), behind an optional bearer token.

See C{doc/operations.md}.
"""
