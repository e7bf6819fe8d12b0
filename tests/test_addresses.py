"""HOST:PORT handling of the deployment commands, IPv6 included."""

import pytest

from fedelta.common.processes import join_address, reachable_host, split_address


@pytest.mark.parametrize("address, host, port", [
    ("0.0.0.0:9092", "0.0.0.0", 9092),
    ("fl.example.org:443", "fl.example.org", 443),
    ("[::]:9092", "::", 9092),
    ("[::1]:9093", "::1", 9093),
    ("[2001:db8::7]:1", "2001:db8::7", 1),
])
def test_addresses_split_and_join_back_unchanged(address, host, port):
    assert split_address(address) == (host, port)
    assert join_address(host, port) == address


@pytest.mark.parametrize("address", ["9092", "host:", ":9092", "host:0", "host:65536", "host:http"])
def test_bad_addresses_are_refused_with_an_example(address):
    with pytest.raises(ValueError, match="HOST:PORT"):
        split_address(address)


def test_a_wildcard_listener_is_reached_over_loopback_of_its_family():
    assert [reachable_host(h) for h in ("0.0.0.0", "", "localhost", "::", "10.0.0.5", "::1")] == [
        "127.0.0.1", "127.0.0.1", "127.0.0.1", "::1", "10.0.0.5", "::1"]
    assert join_address(reachable_host("::"), 9092) == "[::1]:9092"
