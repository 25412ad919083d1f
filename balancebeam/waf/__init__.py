"""
The web application firewall: ModSecurity v3 running the OWASP Core Rule Set,
as a request filter.

L{balancebeam.waf.engine} is what a binding offers (L{modsec_cffi
<balancebeam.waf.modsec_cffi>} for Debian's C library, L{modsec_wheel
<balancebeam.waf.modsec_wheel>} for the PyPI wheel), L{balancebeam.waf.rules}
the loading order, L{balancebeam.waf.runner} where inspections run,
L{balancebeam.waf.filter} the filter and L{balancebeam.waf.build} how the
command line becomes all of these. See C{doc/waf.md}.
"""
