"""
The relay: the client connection (L{balancebeam.relay.client}), one exchange
per request (L{balancebeam.relay.exchange}), the upstream connection
(L{balancebeam.relay.upstream}) and the interfaces between them.
"""
