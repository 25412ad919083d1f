"""
balancebeam: an HTTP/1.1 load balancer built on Twisted.

Run it as a twistd plugin: C{twistd -n balancebeam --upstream 127.0.0.1:8081}.
"""

__version__ = "0.1.0"
