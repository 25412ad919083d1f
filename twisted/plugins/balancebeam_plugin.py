"""
Registers C{twistd balancebeam}: the plugin points twistd at
L{balancebeam.tap}, which holds C{Options} and C{makeService}.

This directory has no C{__init__.py} on purpose: C{twisted.plugins} gathers
plugin modules from every C{twisted/plugins/} directory on C{sys.path}.
"""

from twisted.application.reactors import Reactor
from twisted.application.service import ServiceMaker

balancebeam = ServiceMaker(
    "balancebeam",
    "balancebeam.tap",
    "An HTTP/1.1 load balancer",
    "balancebeam",
)


#: C{twistd --reactor=balancebeam-epoll}: L{balancebeam.twisted_internals.install}
#: installs the lean epoll reactor on the Twisted versions it was checked
#: against, Twisted's stock epoll reactor otherwise (saying so in the log).
balancebeam_epoll = Reactor(
    "balancebeam-epoll",
    "balancebeam.twisted_internals",
    "epoll without the legacy per-event log context: less CPU per request "
    "(Twisted's stock epoll on unchecked Twisted versions or with "
    "BALANCEBEAM_TWISTED_INTERNALS=off)",
)
