"""The dashboards in a real browser against the real bosonserver and higgsnode in the lab.

One lab for the module: the tests run in order on it (log in and see the node come online,
the XSS payload in the node's region, revoke, quota, the owner's pause). Screenshots of each
page go to tests/artifacts/dashboard/ (paths printed).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from higgs.lab.errors import LabError
from higgs.lab.lab import Lab
from higgs.lab.portal import Portal
from higgs.lab.product import API_PORT, Product
from higgs.lab.wireguard import new_keypair
from tests.e2e.browser import chromium, screenshot, until
from tests.grafana import exported_names, grafana_names

pytestmark = [pytest.mark.e2e, pytest.mark.root]

XSS = '<img src=x onerror="window.__xss=1">'
NODE_DASHBOARD_PORT = 9586
UDP_PORTS = 10


@dataclass
class Stack:
    lab: Lab
    product: Product
    server: Portal
    browser: WebDriver
    profile: Path

    @property
    def admin_token(self) -> str:
        return (self.product.workdir / "bosonserver" / "admin.token").read_text().strip()

    def open(self, path: str) -> None:
        self.browser.get(self.server.url + path)

    def rows(self, table: str) -> list[list[str]]:
        body = self.browser.find_element(By.ID, table)
        return [
            [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in body.find_elements(By.TAG_NAME, "tr")
        ]

    def in_row(self, table: str, text: str, script: str, *args: object) -> object:
        """Runs ``script`` on the row of ``table`` containing ``text`` in one step (live
        updates replace rows: a row found in one call may be gone in the next)."""
        return self.browser.execute_script(
            "const row = [...document.querySelectorAll('#' + arguments[0] + ' tr')]"
            ".find(tr => tr.textContent.includes(arguments[1]));"
            "if (!row) return null;" + script,
            table, text, *args,
        )  # fmt: skip

    def admin(self, method: str, path: str, body: dict[str, object] | None = None) -> object:
        # From the server's own namespace: the client host's traffic may be in a cut tunnel.
        return self.product.api(self.lab.server, method, path, self.admin_token, body)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not Path("/usr/bin/chromium").exists() or not Path("/usr/bin/chromedriver").exists():
        pytest.skip("chromium and chromium-driver are not installed (scripts/setup.sh)")
    lab = Lab().build()
    try:
        product = Product(lab)
        # With the UDP relay embedded (userspace: no host change), for the relay page's stats.
        product.start_server(args=["--udp-relay-address", lab.server.ip,
                                   "--udp-relay-ports", f"40000-{40000 + UDP_PORTS - 1}",
                                   "--udp-relay-userspace"])  # fmt: skip
        product.provision("alice", "bob", "carol")
        with (
            Portal(lab.server.ns, lab.server.ip, API_PORT) as portal,
            chromium(tmp_path_factory.mktemp("chromium")) as browser,
        ):
            yield Stack(lab, product, portal, browser, tmp_path_factory.getbasetemp())
            for client in product.clients:
                try:
                    client.down()
                except Exception as exc:  # the node stop below must still run
                    print(f"client down: {exc}")
            if product.node_proc is not None and product.node_proc.alive():
                product.stop_node()
    finally:
        lab.teardown()
    left = lab.leftovers()
    assert not left, f"lab {lab.names.stem} left behind: {left}"


# Marks the document (a navigation would lose the mark) and records every row added to the
# table ``arguments[0]`` (only live.js changes a table once the page is loaded).
LIVE_WATCH = """
window.__sameDocument = 42;
window.__added = [];
new MutationObserver(changes => changes.forEach(c => c.addedNodes.forEach(n => {
  if (n.tagName === 'TR') window.__added.push(n.textContent);
}))).observe(document.getElementById(arguments[0]), {childList: true});
"""
NO_POLLING = """
return performance.getEntriesByType('resource')
  .filter(e => e.initiatorType === 'fetch' || e.initiatorType === 'xmlhttprequest')
  .map(e => e.name);
"""


def _no_script_ran(browser: WebDriver) -> bool:
    return browser.execute_script("return window.__xss === undefined") is True


def test_login_then_node_comes_online_live_with_region_as_text(stack: Stack) -> None:
    b = stack.browser
    # A rerun (CI reruns a failed test once) starts logged out and with no node running, as
    # the first run did: what it saw is then the page's doing, not the previous attempt's.
    stack.open("/admin/login")
    b.delete_all_cookies()
    if stack.product.node_proc is not None and stack.product.node_proc.alive():
        stack.product.stop_node()
    stack.open("/admin/")
    assert b.current_url.endswith("/admin/login")
    screenshot(b, "login")
    # A wrong token is refused, the right one logs in.
    b.find_element(By.ID, "token").send_keys("hga_wrong")
    b.find_element(By.ID, "login").click()
    assert "not the admin token" in b.find_element(By.ID, "error").text
    b.find_element(By.ID, "token").send_keys(stack.admin_token)
    b.find_element(By.ID, "login").click()
    until("the nodes page", lambda: b.find_element(By.ID, "nodes"))
    assert stack.admin_token not in b.page_source  # nothing secret in the page
    until("the live stream", lambda: b.find_element(By.ID, "live").text == "live")
    assert not [r for r in stack.rows("nodes") if r[1] == "online"]
    # Whatever changes the table from now on is recorded as it happens, in this document.
    b.execute_script(LIVE_WATCH, "nodes")
    updates = int(b.execute_script("return document.body.dataset.updates || '0'"))

    stack.product.start_node(flags=["--region", XSS])
    row = until(
        "the node online in the table",
        lambda: next((r for r in stack.rows("nodes") if r[1] == "online"), None),
        timeout=180,  # a node's start on a machine as loaded as CI's can take minutes
    )
    # No reload happened: the marker set on this document is still there, and the row was
    # written into it by the event stream (live.js counts the messages it applied).
    assert b.execute_script("return window.__sameDocument") == 42
    added = b.execute_script("return window.__added")
    assert any("online" in text and XSS in text for text in added), added
    assert int(b.execute_script("return document.body.dataset.updates")) > updates
    # Only the event stream fed the page: no polling request of any kind.
    assert b.execute_script(NO_POLLING) == [], "the page polled instead of streaming"
    assert row[2] == "DE"
    assert row[3] == XSS  # the payload is text in the cell...
    assert b.find_element(By.ID, "nodes").find_elements(By.TAG_NAME, "img") == []  # ...not markup
    assert _no_script_ran(b)
    assert "direct" in row[6]
    screenshot(b, "nodes")
    # The first render (server-side) escapes it too.
    b.refresh()
    until("the node row after reload", lambda: stack.rows("nodes"))
    assert stack.rows("nodes")[0][3] == XSS
    assert b.find_element(By.ID, "nodes").find_elements(By.TAG_NAME, "img") == []
    assert _no_script_ran(b)
    for page in ("traffic", "relay"):
        stack.open(f"/admin/{page}")
        until(f"the {page} page live", lambda: b.find_element(By.ID, "live").text == "live")
        screenshot(b, page)
    assert "higgs_relay_datagrams" in b.find_element(By.ID, "relay").text
    # The embedded UDP relay's own counters, handed to the server by the composition root.
    udp = b.find_element(By.ID, "udp_summary").text
    assert f"ports leased 0, free {UDP_PORTS}" in udp
    assert "forwarded by the kernel 0 packets" in udp
    assert "by userspace 0 packets" in udp
    shown = {(r[0], r[1]) for r in stack.rows("udp")}
    for metric in [("higgs_udp_relay_packets_total", "path=kernel"),
                ("higgs_udp_relay_packets_total", "path=userspace"),
                ("higgs_udp_relay_ports", "state=leased"),
                ("higgs_udp_relay_flows", "path=kernel")]:  # fmt: skip
        assert metric in shown, (metric, shown)


def test_revoke_a_client_and_its_session_disappears_live(stack: Stack) -> None:
    b = stack.browser
    stack.product.wait_node_online(stack.product.token("alice"))
    alice = stack.product.connect_stock(stack.lab.client, name="alice")
    assert stack.lab.whoami(stack.lab.client)["ip"] == stack.lab.home_router.ip
    stack.open("/admin/sessions")
    until("alice's session", lambda: any("alice" in r[1] for r in stack.rows("sessions")))
    screenshot(b, "sessions")
    b.execute_script(LIVE_WATCH, "sessions")
    sessions_tab = b.current_window_handle

    b.switch_to.new_window("tab")
    stack.open("/admin/clients")
    until("alice on the clients page", lambda: any("alice" in r[0] for r in stack.rows("clients")))
    screenshot(b, "clients")
    stack.in_row(
        "clients", "alice",
        "[...row.querySelectorAll('button')].find(x => x.textContent == 'revoke').click();"
        "return 1;",
    )  # fmt: skip
    until("the revoke answer", lambda: b.find_element(By.ID, "notice"))
    assert "revoked" in b.find_element(By.ID, "notice").text
    b.close()
    b.switch_to.window(sessions_tab)
    until(
        "alice's session gone from the live page",
        lambda: not any("alice" in r[1] for r in stack.rows("sessions")),
    )
    assert b.execute_script("return window.__sameDocument") == 42  # left without a reload
    screenshot(b, "sessions-after-revoke")
    # Revoked on the clients page too, and its token no longer opens anything.
    stack.open("/admin/clients")
    until(
        "alice revoked on the clients page",
        lambda: any("alice" in r[0] and r[1] == "revoked" for r in stack.rows("clients")),
    )
    with pytest.raises(LabError, match="HTTP 401"):
        stack.product.route(stack.lab.server, stack.product.token("alice"), new_keypair().public)
    # The far end sees it too: the node dropped the peer, traffic no longer passes.
    until(
        "the tunnel of the revoked client to stop passing traffic",
        lambda: _fails(lambda: stack.lab.whoami(stack.lab.client, timeout=3)),
    )
    alice.down()
    stack.product.clients.remove(alice)


def _fails(fn: object) -> bool:
    try:
        fn()  # type: ignore[operator]
    except Exception:
        return True
    return False


def test_quota_cuts_a_client_off_at_its_limit(stack: Stack) -> None:
    b = stack.browser
    product, lab = stack.product, stack.lab
    bob = product.connect_stock(lab.client, name="bob")
    stack.open("/admin/clients")
    until("bob on the clients page", lambda: any("bob" in r[0] for r in stack.rows("clients")))
    stack.in_row(
        "clients", "bob",
        "row.querySelector('input[name=quota_mb]').value = arguments[2];"
        "[...row.querySelectorAll('button')].find(x => x.textContent == 'set').click(); return 1;",
        "2",
    )  # fmt: skip
    until("the quota answer", lambda: b.find_element(By.ID, "notice"))
    assert "2 MB per month" in b.find_element(By.ID, "notice").text

    # 3 MB through the tunnel: over the quota once the node reports its counters.
    got = lab.download(lab.client, 3_000_000)
    assert got.nbytes == 3_000_000
    name = f"bob-{lab.names.stem}"

    def closed_for_quota() -> bool:
        listed = stack.admin("GET", "/v1/admin/sessions?state=closed")
        return any(
            s["client"] == name and s["close_reason"] == "quota_exceeded"
            for s in listed["sessions"]  # type: ignore[index]
        )

    until("bob's session closed at the quota", closed_for_quota, timeout=90)
    clients = {c["name"]: c for c in stack.admin("GET", "/v1/admin/clients")["clients"]}  # type: ignore[index]
    assert clients[name]["rx_bytes"] + clients[name]["tx_bytes"] >= 2_000_000
    assert clients[name]["quota_bytes"] == 2_000_000
    # The CLI shows the same usage.
    listed = json.loads(product.server_cli("client", "list", "--json"))
    assert next(c for c in listed if c["name"] == name)["used_bytes"] >= 2_000_000
    # The cut is real: the node removed the peer, nothing passes any more.
    until(
        "bob's tunnel to stop passing traffic",
        lambda: _fails(lambda: lab.whoami(lab.client, timeout=3)),
    )
    bob.down()
    product.clients.remove(bob)
    # A new route is refused with a message the client can show.
    with pytest.raises(LabError, match=r"HTTP 403.*quota_exceeded.*monthly quota"):
        product.route(lab.client, product.token("bob"), new_keypair().public)
    stack.open("/admin/clients")

    def bob_used_mb() -> float | None:
        row = next((r for r in stack.rows("clients") if r[0] == name), None)
        return float(row[3].removesuffix(" MB")) if row and row[3].endswith(" MB") else None

    assert until("bob's usage on the page", bob_used_mb) >= 2.0
    quota = stack.in_row("clients", name, "return row.querySelector('[name=quota_mb]').value;")
    assert quota == "2"
    screenshot(b, "clients-quota")
    stack.open("/admin/sessions")
    until("the sessions page live", lambda: b.find_element(By.ID, "live").text == "live")
    assert not any(name in r[1] for r in stack.rows("sessions"))
    stack.open("/admin/traffic")
    # The server's own series (sampled every 10 s) shows the download, without a reload.
    until(
        "the download in the traffic series",
        lambda: any(r[2] != "0 B/s" for r in stack.rows("traffic")),
        timeout=40,
    )
    screenshot(b, "traffic-after-download")


def test_owner_pauses_the_node_and_it_takes_no_new_session(stack: Stack) -> None:
    b = stack.browser
    product, lab = stack.product, stack.lab
    carol = product.connect_stock(lab.client, name="carol")  # open before the pause: drains
    token = (product.node_state_dir / "dashboard.token").read_text().strip()
    assert (product.node_state_dir / "dashboard.token").stat().st_mode & 0o777 == 0o600
    with Portal(lab.node.ns, "127.0.0.1", NODE_DASHBOARD_PORT) as node_page:
        b.get(node_page.url + "/")
        assert b.current_url.endswith("/login")
        b.find_element(By.ID, "token").send_keys(token)
        b.find_element(By.ID, "login").click()
        until("the owner page live", lambda: b.find_element(By.ID, "live").text == "live")
        until("carol on the page", lambda: "client 1" in b.find_element(By.ID, "clients").text)
        assert "not configured" in b.find_element(By.ID, "mapping").text
        assert "25" in b.find_element(By.ID, "protections").text  # SMTP blocked by default
        screenshot(b, "owner")
        b.find_element(By.ID, "switch").click()
        until("paused", lambda: "paused" in b.find_element(By.ID, "state").text)
        screenshot(b, "owner-paused")

        def refused() -> str | None:
            try:
                answer = product.route(lab.server, product.token("carol"), new_keypair().public)
            except LabError as exc:
                return str(exc)
            _close(product, lab, answer)  # not paused yet: the session must not linger
            return None

        why = until("the server to route no new session to the paused node", refused, 60)
        assert "HTTP 503" in why, why  # no node fits: not some other refusal
        assert "no_route" in why, why
        # The open session drains: it still carries traffic.
        assert lab.whoami(lab.client)["ip"] == lab.home_router.ip
        # The exporter on the node's loopback.
        metrics = lab.node.run(["curl", "-sS", f"http://127.0.0.1:{NODE_DASHBOARD_PORT}/metrics"])
        assert "higgs_node_paused 1.0" in metrics.stdout
        # Every node metric the Grafana dashboard uses is really exported.
        missing = grafana_names("higgs_node_") - exported_names(metrics.stdout)
        assert not missing, f"packaging/grafana/higgs.json uses unexported {missing}"
        # The operator sees it paused.
        stack.open("/admin/")
        until("paused on the nodes page", lambda: "(paused)" in stack.rows("nodes")[0][1])
        screenshot(b, "nodes-paused")
        b.get(node_page.url + "/")
        until("the owner page live", lambda: b.find_element(By.ID, "live").text == "live")
        b.find_element(By.ID, "switch").click()
        until("resumed", lambda: "taking sessions" in b.find_element(By.ID, "state").text)

        def routed() -> bool:
            _close(product, lab, product.route(lab.server, product.token("carol"),
                                               new_keypair().public))  # fmt: skip
            return True

        # Resumed, it takes sessions again: the refusal above was the pause.
        until("a new session on the resumed node", routed, timeout=60)
    carol.down()
    product.clients.remove(carol)


def _close(product: Product, lab: Lab, answer: dict[str, object]) -> None:
    product.api(lab.server, "DELETE", f"/v1/sessions/{answer['session_id']}",
                product.token("carol"), None)  # fmt: skip
