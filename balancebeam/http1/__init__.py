"""
HTTP/1.x on the wire: head parsing (L{balancebeam.http1.heads}), body
framing (L{balancebeam.http1.framing}) and the rewriting of heads for the
next hop (L{balancebeam.http1.rewrite}). No I/O and no Twisted: bytes in,
records or bytes out.
"""
