"""
Tests for L{balancebeam.clientip}.
"""

from __future__ import annotations

from ipaddress import ip_network

from twisted.trial.unittest import SynchronousTestCase

from balancebeam.clientip import client_key, parse_trusted_networks

PROXIES = parse_trusted_networks(["10.0.0.0/8", "2001:db8:ffff::/48"])


class ParseTrustedNetworksTests(SynchronousTestCase):
    """
    Tests for L{parse_trusted_networks}.
    """

    def test_networks_and_addresses(self) -> None:
        """
        CIDR networks of both families and single addresses are accepted,
        and host bits are cleared.
        """
        self.assertEqual(
            parse_trusted_networks(
                [" 10.0.0.0/8", "192.0.2.7", "2001:db8::/32 ", "172.16.9.9/12"]
            ),
            (
                ip_network("10.0.0.0/8"),
                ip_network("192.0.2.7/32"),
                ip_network("2001:db8::/32"),
                ip_network("172.16.0.0/12"),
            ),
        )

    def test_empty(self) -> None:
        """
        No values give no networks.
        """
        self.assertEqual(parse_trusted_networks([]), ())

    def test_bad_values(self) -> None:
        """
        Garbage, bad prefix lengths and empty values are refused with the
        reason of L{parse_trusted_network}, the one rule.
        """
        for value in ("proxy.example", "10.0.0.0/33", "10.0.0.0/8/8", ""):
            error = self.assertRaises(ValueError, parse_trusted_networks, ["10.0.0.0/8", value])
            self.assertEqual(
                str(error), "is not an IP network such as 10.0.0.0/8 or fd00::/8"
            )


class ClientKeyTests(SynchronousTestCase):
    """
    Tests for L{client_key}.
    """

    def test_peer_without_trust(self) -> None:
        """
        With no trusted networks, the header is ignored and the peer is the client.
        """
        self.assertEqual(client_key("203.0.113.5", b"198.51.100.1", ()), "203.0.113.5")

    def test_untrusted_peer_header_ignored(self) -> None:
        """
        A peer outside the trusted networks cannot choose its key with the header.
        """
        self.assertEqual(client_key("203.0.113.5", b"198.51.100.1", PROXIES), "203.0.113.5")

    def test_trusted_peer_without_header(self) -> None:
        """
        A trusted peer without the header is itself the client.
        """
        self.assertEqual(client_key("10.1.2.3", None, PROXIES), "10.1.2.3")
        self.assertEqual(client_key("10.1.2.3", b" ", PROXIES), "10.1.2.3")

    def test_trusted_peer_single_hop(self) -> None:
        """
        Behind one trusted proxy, the address it appended is the client.
        """
        self.assertEqual(client_key("10.1.2.3", b"198.51.100.1", PROXIES), "198.51.100.1")

    def test_spoofed_leftmost_ignored(self) -> None:
        """
        Addresses the client wrote itself, left of the one our proxy appended,
        do not change the key, even when they claim to be trusted.
        """
        for spoofed in (b"1.1.1.1", b"10.9.9.9", b"garbage", b"1.1.1.1, 10.0.0.1"):
            self.assertEqual(
                client_key("10.1.2.3", spoofed + b", 198.51.100.1", PROXIES), "198.51.100.1"
            )

    def test_chain_of_trusted_proxies(self) -> None:
        """
        Trusted hops on the right are skipped up to the first untrusted address.
        """
        self.assertEqual(
            client_key("10.1.2.3", b"192.0.2.1, 198.51.100.1, 10.5.5.5, 10.6.6.6", PROXIES),
            "198.51.100.1",
        )

    def test_several_headers_joined(self) -> None:
        """
        Values of several headers joined with C{", "} form one list.
        """
        self.assertEqual(
            client_key("10.1.2.3", b"192.0.2.1, 198.51.100.1, 10.5.5.5", PROXIES),
            client_key("10.1.2.3", b"192.0.2.1,198.51.100.1 ,10.5.5.5", PROXIES),
        )

    def test_all_trusted(self) -> None:
        """
        When every entry is trusted, the leftmost one is the client.
        """
        self.assertEqual(client_key("10.1.2.3", b"10.7.7.7, 10.5.5.5", PROXIES), "10.7.7.7")

    def test_ipv6(self) -> None:
        """
        IPv6 peers and entries, bare or in brackets with or without a port,
        are understood and returned in compressed form.
        """
        peer = "2001:db8:ffff::1"
        for entry in (
            b"2001:DB8:0:0::5",
            b"[2001:db8::5]",
            b"[2001:db8::5]:4711",
            b'"[2001:db8::5]:4711"',
        ):
            self.assertEqual(client_key(peer, entry, PROXIES), "2001:db8::5")

    def test_ipv4_with_port(self) -> None:
        """
        An IPv4 entry with a port is the address without it.
        """
        self.assertEqual(client_key("10.1.2.3", b"198.51.100.1:5678", PROXIES), "198.51.100.1")

    def test_mapped_ipv4_peer(self) -> None:
        """
        An IPv4-mapped IPv6 peer (dual-stack listener) is its IPv4 address,
        for trust and for the key.
        """
        self.assertEqual(client_key("::ffff:10.1.2.3", b"198.51.100.1", PROXIES), "198.51.100.1")
        self.assertEqual(client_key("::ffff:203.0.113.5", None, PROXIES), "203.0.113.5")

    def test_peer_normalised(self) -> None:
        """
        The peer address is returned in compressed form.
        """
        self.assertEqual(client_key("2001:DB8:0:0:0:0:0:1", None, ()), "2001:db8::1")

    def test_malformed_entry_stops_at_last_trusted_hop(self) -> None:
        """
        A malformed entry stops the walk: the trusted hop that wrote it is the key.
        """
        for entry in (
            b"unknown",
            b"_hidden",
            b"host.example",
            b"198.51.100.1:port",
            b"[198.51.100.1]",
            b"[2001:db8::5",
            b"[2001:db8::5]x",
            b"\xff\xfe",
        ):
            self.assertEqual(client_key("10.1.2.3", entry, PROXIES), "10.1.2.3")
            self.assertEqual(
                client_key("10.1.2.3", b"198.51.100.1, " + entry + b", 10.5.5.5", PROXIES),
                "10.5.5.5",
            )

    def test_empty_elements_skipped(self) -> None:
        """
        Empty list elements are skipped, as HTTP list syntax allows them.
        """
        self.assertEqual(client_key("10.1.2.3", b"198.51.100.1, ,", PROXIES), "198.51.100.1")

    def test_non_ip_peer(self) -> None:
        """
        A peer that is not an IP address (a UNIX socket) is its own key.
        """
        self.assertEqual(
            client_key("/run/balancebeam.sock", b"198.51.100.1", PROXIES), "/run/balancebeam.sock"
        )
