"""An IPv6 UDP relay address on the server side: one spelling, bracketed in endpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from higgs.server.config import ServerSettings
from higgs.server.relay.bridge import parse_endpoint
from higgs.server.services.relay_leases import UdpLeases


def test_a_v6_relay_address_is_normalised_and_bracketed(tmp_path: Path) -> None:
    s = ServerSettings(data_dir=tmp_path, udp_relay_address="FD00:9:0::1")
    assert s.udp_relay_address == "fd00:9::1"
    leases = UdpLeases(db=Any, settings=s)  # type: ignore[arg-type]  # no query here
    assert leases.endpoint(40001) == "[fd00:9::1]:40001"
    assert parse_endpoint(leases.endpoint(40001)) == ("fd00:9::1", 40001)  # what the hub reads
    v4 = ServerSettings(data_dir=tmp_path, udp_relay_address="198.51.100.10")
    assert UdpLeases(db=Any, settings=v4).endpoint(40001) == "198.51.100.10:40001"  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="udp_relay_address"):
        ServerSettings(data_dir=tmp_path, udp_relay_address="relay.example")


def test_the_node_is_told_a_v6_relay_endpoint_and_a_bad_one_is_refused() -> None:
    from higgs.protocol.control import PeerAdd

    base: dict[str, Any] = {
        "session_id": "s_" + "a" * 20, "channel": 1, "relayed": True, "address": "10.77.0.5/32",
        "public_key": "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=",
    }  # fmt: skip
    add = PeerAdd(**base, relay_endpoint="[2001:db8::10]:40000")
    assert add.model_dump(mode="json")["relay_endpoint"] == "[2001:db8::10]:40000"
    assert PeerAdd(**base, relay_endpoint="198.51.100.10:40000").relay_endpoint
    for bad in ("2001:db8::10:40000", "[198.51.100.10]:40000", "[2001:db8::10]:0"):
        with pytest.raises(ValidationError, match="relay_endpoint"):
            PeerAdd(**base, relay_endpoint=bad)
