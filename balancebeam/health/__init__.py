"""
Active health checks: the checker service (L{balancebeam.health.checker})
and the HTTP probe it runs (L{balancebeam.health.probe}).
"""
