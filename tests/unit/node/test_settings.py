from __future__ import annotations

from pathlib import Path

import pytest

from higgs.common.errors import ConfigError
from higgs.node.settings import load_node_settings, parse_upstream, system_resolvers


def test_defaults_are_usable_without_a_file() -> None:
    s = load_node_settings(environ={})
    assert s.interface == "higgsnode"
    assert str(s.node_address) == "10.77.0.1/24"
    assert s.state_dir == Path("/var/lib/higgsnode")
    assert s.firewall == "auto"


def test_file_env_and_flags_in_rising_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "node.toml"
    cfg.write_text(
        'server = "http://boson.test:8080/"\ninterface = "from-file"\nlisten_port = 1000\n'
        '[dns]\nupstreams = ["127.0.0.1:5353", "tcp://127.0.0.2", "https://doh.test/dns-query"]\n'
    )
    s = load_node_settings(
        cfg,
        environ={"HIGGSNODE_LISTEN_PORT": "2000", "HIGGSNODE_INTERFACE": "from-env"},
        overrides={"interface": "hg-x.1", "listen_port": None},
    )
    assert s.server == "http://boson.test:8080"
    assert s.interface == "hg-x.1"
    assert s.listen_port == 2000
    assert [u.label() for u in s.dns.upstreams] == [
        "udp://127.0.0.1:5353",
        "tcp://127.0.0.2:53",
        "https://doh.test/dns-query",
    ]


def test_env_upstreams_are_comma_separated() -> None:
    s = load_node_settings(environ={"HIGGSNODE_DNS__UPSTREAMS": "127.0.0.1, 127.0.0.2:54"})
    assert [(u.host, u.port) for u in s.dns_upstreams()] == [("127.0.0.1", 53), ("127.0.0.2", 54)]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"interface": "a" * 16}, "interface"),
        ({"interface": "bad/name"}, "interface"),
        ({"listen_port": 70000}, "listen_port"),
        ({"tunnel_subnet": "10.77.0.0/30"}, "tunnel_subnet"),
        ({"tunnel_subnet": "8.8.8.0/24"}, "tunnel_subnet"),
        ({"endpoint": "203.0.113.7"}, "endpoint"),
        ({"enroll_key": "hgn_wrongkind"}, "enroll_key"),
        ({"server": "boson.test"}, "server"),
        ({"country": "Germany"}, "country"),
        ({"firewall": "pf"}, "firewall"),
        ({"dns": {"upstreams": ["not an ip"]}}, "dns.upstreams"),
        ({"dns": {"timeout_s": 0}}, "dns.timeout_s"),
        ({"no_such_key": 1}, "no_such_key"),
    ],
)
def test_bad_values_name_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=rf"field '{field}'"):
        load_node_settings(environ={}, overrides=overrides)


def test_upstream_forms() -> None:
    assert parse_upstream("[::1]:5353").label() == "udp://[::1]:5353"
    assert parse_upstream("tcp://192.0.2.1").port == 53
    u = parse_upstream("https://dns.example/dns-query")
    assert (u.kind, u.port) == ("https", 443)
    with pytest.raises(ValueError, match="scheme"):
        parse_upstream("tls://192.0.2.1")


def test_system_resolvers_read_resolv_conf(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("# c\nsearch lan\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\noptions x\n")
    assert [u.host for u in system_resolvers(conf)] == ["127.0.0.53", "fe80::1"]
    assert system_resolvers(tmp_path / "missing") == []
