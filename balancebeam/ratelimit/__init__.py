"""
Per-client rate limiting: limiters behind L{IRateLimiter
<balancebeam.interfaces.IRateLimiter>} that keep their counters in memory
(L{balancebeam.ratelimit.memory}) or in Redis (L{balancebeam.ratelimit.redis}),
built from the configuration by L{balancebeam.ratelimit.build}.
"""
