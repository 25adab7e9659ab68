"""The handshake-confirmed binding (docs/protocol.md §5): every rule, and the attacks it stops."""

from __future__ import annotations

from higgs.relay.binding import Binding, Drop, Event, Verdict

from . import vectors as v

CLIENT = ("198.51.100.10", 50001)
CLIENT_ROAMED = ("198.51.100.77", 61000)
NODE = ("203.0.113.5", 51820)
ATTACKER = ("192.0.2.66", 4444)

C_IDX, N_IDX = 0x11111111, 0x22222222


def make() -> Binding:
    return Binding(client_key=v.CLIENT_PUB, node_key=v.NODE_PUB)


def bound() -> Binding:
    """Node initiates first (its keepalive), then the client's handshake binds both legs."""
    b = make()
    assert b.receive(NODE, v.initiation(0x99, v.CLIENT_PUB), 0.0) == Verdict(drop=Drop.NO_PEER)
    assert b.receive(CLIENT, v.initiation(C_IDX, v.NODE_PUB), 0.1) == Verdict(to=NODE)
    assert b.receive(NODE, v.response(N_IDX, C_IDX, v.CLIENT_PUB), 0.2) == Verdict(
        to=CLIENT, event=Event.BIND
    )
    return b


def test_the_first_confirmed_handshake_binds_both_legs() -> None:
    b = bound()
    assert (b.client, b.node, b.generation) == (CLIENT, NODE, 1)
    assert b.receive(CLIENT, v.data(N_IDX), 1.0) == Verdict(to=NODE)
    assert b.receive(NODE, v.data(C_IDX), 1.0) == Verdict(to=CLIENT)


def test_nothing_is_bound_by_an_initiation_alone() -> None:
    b = make()
    b.receive(NODE, v.initiation(0x99, v.CLIENT_PUB), 0.0)
    b.receive(CLIENT, v.initiation(C_IDX, v.NODE_PUB), 0.1)
    assert (b.client, b.node) == (None, None)
    assert b.receive(CLIENT, v.data(N_IDX), 0.2) == Verdict(drop=Drop.UNBOUND_SOURCE)


def test_garbage_and_wrong_keys_are_dropped_before_any_state_changes() -> None:
    b = bound()
    assert b.receive(ATTACKER, b"\x01hello", 2.0).drop is Drop.MALFORMED
    assert b.receive(ATTACKER, b"", 2.0).drop is Drop.MALFORMED
    other_key = bytes(32)
    assert b.receive(ATTACKER, v.initiation(7, other_key), 2.0).drop is Drop.BAD_MAC1
    assert b.receive(ATTACKER, v.response(7, C_IDX, other_key), 2.0).drop is Drop.BAD_MAC1
    assert (b.client, b.node, b.generation) == (CLIENT, NODE, 1)


def test_spoofed_data_with_a_live_receiver_index_redirects_nothing() -> None:
    b = bound()
    for counter in range(1000):
        verdict = b.receive(ATTACKER, v.data(N_IDX, counter), 3.0)
        assert verdict == Verdict(drop=Drop.UNBOUND_SOURCE)
    assert (b.client, b.node) == (CLIENT, NODE)


def test_a_replayed_initiation_from_elsewhere_is_forwarded_but_never_binds() -> None:
    b = bound()
    replay = v.initiation(C_IDX + 1, v.NODE_PUB)
    # The node's WireGuard rejects the replay (old timestamp), so no response ever confirms it.
    assert b.receive(ATTACKER, replay, 4.0) == Verdict(to=NODE, event=Event.CANDIDATE)
    assert b.receive(ATTACKER, v.data(N_IDX), 4.1).drop is Drop.UNBOUND_SOURCE
    assert (b.client, b.node) == (CLIENT, NODE)
    # A forged response needs the pending sender index, which only an on-path party saw.
    guess = v.response(N_IDX, 0x12345678, v.CLIENT_PUB)
    assert b.receive(ATTACKER, guess, 4.2).drop is Drop.UNCONFIRMED
    assert b.generation == 1


def test_a_roaming_client_is_followed_after_its_next_confirmed_handshake() -> None:
    b = bound()
    assert b.receive(CLIENT_ROAMED, v.data(N_IDX), 5.0).drop is Drop.UNBOUND_SOURCE
    assert b.receive(CLIENT_ROAMED, v.initiation(0x33, v.NODE_PUB), 5.1) == Verdict(
        to=NODE, event=Event.CANDIDATE
    )
    assert b.receive(NODE, v.response(0x44, 0x33, v.CLIENT_PUB), 5.2) == Verdict(
        to=CLIENT_ROAMED, event=Event.REBIND
    )
    assert (b.client, b.node, b.generation) == (CLIENT_ROAMED, NODE, 2)
    assert b.receive(CLIENT, v.data(N_IDX), 5.3).drop is Drop.UNBOUND_SOURCE
    assert b.receive(CLIENT_ROAMED, v.data(N_IDX), 5.3) == Verdict(to=NODE)


def test_a_rehandshake_from_the_same_addresses_is_no_rebind() -> None:
    b = bound()
    assert b.receive(CLIENT, v.initiation(0x55, v.NODE_PUB), 6.0) == Verdict(to=NODE)
    assert b.receive(NODE, v.response(0x66, 0x55, v.CLIENT_PUB), 6.1) == Verdict(to=CLIENT)
    assert b.generation == 1


def test_the_node_leg_rebinds_when_the_client_confirms_it() -> None:
    b = bound()
    node_moved = ("203.0.113.5", 1025)
    assert b.receive(node_moved, v.initiation(0x77, v.CLIENT_PUB), 7.0) == Verdict(
        to=CLIENT, event=Event.CANDIDATE
    )
    assert b.receive(CLIENT, v.response(0x88, 0x77, v.NODE_PUB), 7.1) == Verdict(
        to=node_moved, event=Event.REBIND
    )
    assert b.node == node_moved


def test_a_response_must_come_from_the_other_side() -> None:
    b = make()
    b.receive(CLIENT, v.initiation(C_IDX, v.NODE_PUB), 0.0)
    # mac1 keyed to the node: a client-side message, so it cannot confirm the client's own
    assert b.receive(ATTACKER, v.response(1, C_IDX, v.NODE_PUB), 0.1).drop is Drop.UNCONFIRMED


def test_the_first_source_of_a_sender_index_wins() -> None:
    b = make()
    b.receive(NODE, v.initiation(0x99, v.CLIENT_PUB), 0.0)
    b.receive(CLIENT, v.initiation(C_IDX, v.NODE_PUB), 0.1)
    b.receive(ATTACKER, v.initiation(C_IDX, v.NODE_PUB), 0.15)  # a copy raced from elsewhere
    assert b.receive(NODE, v.response(N_IDX, C_IDX, v.CLIENT_PUB), 0.2).to == CLIENT
    assert b.client == CLIENT


def test_pending_initiations_expire_and_are_bounded() -> None:
    b = make()
    b.receive(NODE, v.initiation(0x99, v.CLIENT_PUB), 0.0)
    b.receive(CLIENT, v.initiation(C_IDX, v.NODE_PUB), 0.0)
    late = v.response(N_IDX, C_IDX, v.CLIENT_PUB)
    assert b.receive(NODE, late, b.pending_ttl + 1).drop is Drop.UNCONFIRMED
    for i in range(100):
        b.receive(ATTACKER, v.initiation(1000 + i, v.NODE_PUB), 20.0)
    assert len(b._pending) <= b.max_pending


def test_cookie_replies_reach_the_initiator_only_from_the_other_side() -> None:
    b = bound()
    b.receive(CLIENT, v.initiation(0x55, v.NODE_PUB), 8.0)
    assert b.receive(ATTACKER, v.cookie(0x55), 8.1).drop is Drop.UNCONFIRMED
    assert b.receive(NODE, v.cookie(0x56), 8.1).drop is Drop.UNCONFIRMED
    assert b.receive(NODE, v.cookie(0x55), 8.1) == Verdict(to=CLIENT)


def test_data_before_the_other_leg_is_bound_has_no_peer() -> None:
    b = make()
    b.client = CLIENT  # a half-bound state only reachable by hand
    assert b.receive(CLIENT, v.data(1), 0.0).drop is Drop.NO_PEER


def test_protocol_md_carries_the_same_vectors() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[3] / "docs" / "protocol.md").read_text()
    assert v.INITIATION[:8].hex(" ") in text
    assert v.INITIATION[116:132].hex(" ") in text
    response = v.response(0x01020304, 0xA0B0C0D0, v.NODE_PUB)
    assert response[:12].hex(" ") in text
    assert response[60:76].hex(" ") in text
    for reason in Drop:
        assert f"`{reason.value}`" in text
    for event in Event:
        assert f"`{event.value}`" in text
    # The starting-address vector (the tests below) is the one the document tabulates.
    for name in (
        "test_the_nodes_initiation_goes_to_the_starting_address_and_the_apps_answer_binds",
        "test_a_response_from_elsewhere_than_the_starting_address_binds_nothing",
    ):
        assert name in text
        assert name in globals()
    assert f"{APP[0]}:{APP[1]}" in text
    assert f"{N_IDX:#010x}" in text


def test_a_flood_of_initiations_from_strangers_is_capped_but_the_legs_are_not() -> None:
    b = bound()
    verdicts = [
        b.receive(ATTACKER, v.initiation(5000 + i, v.NODE_PUB), 30.0).drop for i in range(50)
    ]
    assert verdicts.count(Drop.RATE_LIMITED) == 40
    assert b.receive(CLIENT, v.initiation(0x5555, v.NODE_PUB), 30.1) == Verdict(to=NODE)
    assert b.receive(ATTACKER, v.initiation(6000, v.NODE_PUB), 31.5).drop is None


def test_legs_recorded_before_a_restart_carry_data_at_once() -> None:
    """Legs an earlier run bound (issue 17: a server restart): data flows again as soon as the
    relay is back, without waiting for the peers' next handshake (15 s after their last
    answer); a handshake from a new source still rebinds only when confirmed."""
    b = make()
    b.restore(CLIENT, NODE)
    assert (b.client, b.node) == (CLIENT, NODE)
    assert b.bound
    assert b.generation == 1
    assert b.receive(CLIENT, v.data(N_IDX), 0.0) == Verdict(to=NODE)
    assert b.receive(NODE, v.data(C_IDX), 0.0) == Verdict(to=CLIENT)
    assert b.receive(ATTACKER, v.data(N_IDX), 0.0) == Verdict(drop=Drop.UNBOUND_SOURCE)
    b.receive(ATTACKER, v.initiation(0x77, v.NODE_PUB), 0.1)
    assert (b.client, b.node) == (CLIENT, NODE)


def test_one_recorded_leg_after_a_restart_forwards_the_first_initiation_but_binds_nothing() -> None:
    """Only the node's leg was recorded: it is a candidate, never a leg; the client's first
    initiation reaches it at once and only the node's response binds."""
    b = make()
    b.restore(None, NODE)
    assert (b.client, b.node) == (None, None)
    assert b.receive(CLIENT, v.data(N_IDX), 0.0) == Verdict(drop=Drop.UNBOUND_SOURCE)
    assert b.receive(CLIENT, v.initiation(C_IDX, v.NODE_PUB), 0.1) == Verdict(to=NODE)
    assert b.receive(NODE, v.response(N_IDX, C_IDX, v.CLIENT_PUB), 0.2) == Verdict(
        to=CLIENT, event=Event.BIND
    )
    assert (b.client, b.node) == (CLIENT, NODE)


def test_a_hint_never_replaces_a_live_candidate() -> None:
    b = make()
    b.receive(NODE, v.initiation(0x99, v.CLIENT_PUB), 0.0)
    b.restore(None, ATTACKER)
    assert b.receive(CLIENT, v.initiation(C_IDX, v.NODE_PUB), 0.1) == Verdict(to=NODE)


APP = ("198.51.100.30", 41641)  # the app's public address as the node last saw it


def started() -> Binding:
    """A direct device's lease (issue 18): the server knows where the app was, the app does
    not know the relay."""
    return Binding(client_key=v.CLIENT_PUB, node_key=v.NODE_PUB, client_start=APP)


def test_the_nodes_initiation_goes_to_the_starting_address_and_the_apps_answer_binds() -> None:
    """docs/protocol.md §5.2, the starting-address vector."""
    b = started()
    assert b.receive(NODE, v.initiation(N_IDX, v.CLIENT_PUB), 0.0) == Verdict(to=APP)
    assert (b.client, b.node) == (None, None)  # an initiation alone binds nothing
    assert b.receive(APP, v.response(C_IDX, N_IDX, v.NODE_PUB), 0.1) == Verdict(
        to=NODE, event=Event.BIND
    )
    assert (b.client, b.node, b.client_start) == (APP, NODE, None)
    assert b.receive(APP, v.data(N_IDX), 0.2) == Verdict(to=NODE)
    assert b.receive(NODE, v.data(C_IDX), 0.2) == Verdict(to=APP)


def test_a_response_from_elsewhere_than_the_starting_address_binds_nothing() -> None:
    """Even with the right receiver index (an attacker on the path to the app saw it)."""
    b = started()
    b.receive(NODE, v.initiation(N_IDX, v.CLIENT_PUB), 0.0)
    forged = v.response(C_IDX, N_IDX, v.NODE_PUB)
    assert b.receive(ATTACKER, forged, 0.1) == Verdict(drop=Drop.UNCONFIRMED)
    assert (b.client, b.node) == (None, None)
    # The app's own answer still binds afterwards (the initiation is still pending).
    assert b.receive(APP, forged, 0.2) == Verdict(to=NODE, event=Event.BIND)


def test_a_strangers_initiation_does_not_divert_the_nodes_initiations() -> None:
    b = started()
    # Anyone who knows the node's public key makes a client-side initiation with a valid mac1.
    assert b.receive(ATTACKER, v.initiation(0x77, v.NODE_PUB), 0.0) == Verdict(drop=Drop.NO_PEER)
    assert b.receive(NODE, v.initiation(N_IDX, v.CLIENT_PUB), 0.1) == Verdict(to=APP)
    assert b.receive(ATTACKER, v.response(C_IDX, N_IDX, v.NODE_PUB), 0.2).drop is Drop.UNCONFIRMED
    assert b.receive(APP, v.response(C_IDX, N_IDX, v.NODE_PUB), 0.3).event is Event.BIND
    assert b.client == APP


def test_once_bound_the_client_leg_roams_by_the_ordinary_rules() -> None:
    b = started()
    b.receive(NODE, v.initiation(N_IDX, v.CLIENT_PUB), 0.0)
    b.receive(APP, v.response(C_IDX, N_IDX, v.NODE_PUB), 0.1)
    assert b.receive(CLIENT_ROAMED, v.initiation(0x5151, v.NODE_PUB), 20.0) == Verdict(
        to=NODE, event=Event.CANDIDATE
    )
    assert b.receive(NODE, v.response(0x6161, 0x5151, v.CLIENT_PUB), 20.1) == Verdict(
        to=CLIENT_ROAMED, event=Event.REBIND
    )
    assert (b.client, b.node) == (CLIENT_ROAMED, NODE)


def test_a_cookie_reply_from_the_starting_address_reaches_the_node() -> None:
    b = started()
    b.receive(NODE, v.initiation(N_IDX, v.CLIENT_PUB), 0.0)
    assert b.receive(APP, v.cookie(N_IDX), 0.1) == Verdict(to=NODE)
    assert b.receive(ATTACKER, v.cookie(N_IDX), 0.1) == Verdict(drop=Drop.UNCONFIRMED)


def test_legs_restored_after_a_restart_spend_the_starting_address() -> None:
    b = started()
    b.restore(CLIENT, NODE)
    assert (b.client, b.node, b.client_start) == (CLIENT, NODE, None)
