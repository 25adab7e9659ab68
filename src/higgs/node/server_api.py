"""The node's REST conversation with bosonserver: register, heartbeat, deregister.

- **Register** (``POST /v1/nodes/register``) with the node's own token when it has one, else with
  the enrollment key. The answer (node id, node token, relay URL, heartbeat interval) is kept in
  ``<state-dir>/identity.json`` (0600), so a restart keeps the same identity without spending
  another use of the enrollment key. Each attempt first fetches a challenge
  (``POST /v1/nodes/challenge``) and proves the node's private key with it (protocol §2.1).
- **Heartbeat** at the interval the server gives, with real metrics. A 401, 403, 404 or 409
  means the server has forgotten or stopped the node (its database was reset, the node was
  deleted or deregistered): register again.
- **Unreachable server** (connection errors, timeouts, 5xx, 429): retry with exponential backoff
  and jitter. Nothing on the host depends on the server, so direct-mode sessions keep working.
- **Rejected enrollment** (401/403 with the enrollment key, or a 4xx naming a bad field): a
  fatal :class:`EnrollmentRejected` with the server's message, never a retry loop.
- **Deregister** (``DELETE /v1/nodes/{id}``) on graceful stop, best effort and bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from higgs.common.backoff import Backoff
from higgs.common.errors import HiggsError
from higgs.common.keys import PrivateKey, write_secret_file
from higgs.daemon import rest
from higgs.protocol import keyproof
from higgs.protocol.api import (
    KeyChallenge,
    NodeRegisterRequest,
    NodeRegisterResponse,
    ReachabilityConfirm,
    RelayTarget,
)
from higgs.transport.relay_rtt import measure_all

__all__ = [
    "EnrollmentRejected",
    "Identity",
    "ServerApi",
    "ServerApiError",
    "ServerApiStatus",
    "load_identity",
]

log = logging.getLogger(__name__)

IDENTITY_FILE = "identity.json"


class ServerApiError(HiggsError):
    """The server refused the node for a reason retrying will not fix."""


class EnrollmentRejected(ServerApiError):
    pass


class _Transient(Exception):
    """The server is unreachable or overloaded: retry later."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


def _relay_targets(answer: Any) -> list[tuple[str, int]]:
    """The relay hosts to time from a heartbeat answer (older servers send none)."""
    relays = answer.get("relays") if isinstance(answer, dict) else None
    out = []
    for item in relays if isinstance(relays, list) else []:
        try:
            target = RelayTarget.model_validate(item)
        except ValidationError:
            continue
        out.append((target.address, target.probe_port))
    return out[:64]


class _Forgotten(Exception):
    """The server does not know this node (or its token) any more."""


@dataclass(frozen=True)
class Identity:
    server: str
    node_id: str
    node_token: str
    relay_url: str
    heartbeat_interval_s: float

    def redacted(self) -> dict[str, Any]:
        return {"server": self.server, "node_id": self.node_id, "relay_url": self.relay_url}


def load_identity(state_dir: Path, server: str | None = None) -> Identity | None:
    """The identity stored by an earlier registration (with ``server``, if given)."""
    try:
        data = json.loads((state_dir / IDENTITY_FILE).read_text())
        ident = Identity(
            server=str(data["server"]),
            node_id=str(data["node_id"]),
            node_token=str(data["node_token"]),
            relay_url=str(data["relay_url"]),
            heartbeat_interval_s=float(data["heartbeat_interval_s"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if server is not None and ident.server != server:
        return None  # registered with another server: that identity means nothing here
    return ident


@dataclass
class ServerApiStatus:
    state: str = "starting"  # starting | online | unreachable | rejected | stopped
    node_id: str | None = None
    last_ok: float | None = None
    last_error: str | None = None
    registrations: int = 0
    heartbeats: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "node_id": self.node_id,
            "last_ok_age_s": None if self.last_ok is None else round(time.time() - self.last_ok, 1),
            "last_error": self.last_error,
            "registrations": self.registrations,
            "heartbeats": self.heartbeats,
        }


def _error_message(response: httpx.Response) -> str:
    _, message = rest.error_body(response)
    return message or f"HTTP {response.status_code}"


class ServerApi:
    def __init__(
        self,
        server: str,
        *,
        enroll_key: str | None,
        registration: NodeRegisterRequest,
        state_dir: Path,
        heartbeat_body: Callable[[], Awaitable[dict[str, Any]]],
        on_identity: Callable[[Identity], Awaitable[None]] | None = None,
        timeout_s: float = 10.0,
        backoff: Backoff | None = None,
        private_key: PrivateKey | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self._private_key = private_key  # proves the public key at registration
        self._enroll_key = enroll_key
        self._registration = registration.model_dump(mode="json")
        self._state_dir = state_dir
        self._heartbeat_body = heartbeat_body
        self._on_identity = on_identity
        # Short while the server was reachable in the last minute (a restart), growing to a
        # minute for a server that stays away.
        self._backoff = backoff or Backoff(
            initial=1.0, maximum=60.0, recent_maximum=2.0, recent_window_s=60.0
        )
        self._client = rest.new_client(
            self.server, timeout=timeout_s, user_agent="higgsnode", transport=transport
        )
        self.identity: Identity | None = load_identity(state_dir, self.server)
        self.status = ServerApiStatus(node_id=self.identity.node_id if self.identity else None)
        self._fresh = False  # registered during this run already
        self._relay_targets: list[tuple[str, int]] = []  # from the last heartbeat answer
        self._wake = asyncio.Event()  # something the server should hear about at once

    def set_tunnel_mtu(self, mtu: int) -> None:
        """The node's tunnel MTU changed: announced in later registrations, and in the
        heartbeat body (the agent's), which goes out now rather than at the next interval."""
        self._registration["tunnel_mtu"] = mtu
        self._wake.set()

    def wake(self) -> None:
        """Something changed the server must hear about now (the owner's pause switch)."""
        self._wake.set()

    def set_port_mapping(self, report: dict[str, Any] | None) -> None:
        """The router mapping changed: carried by later registrations (the heartbeat body,
        the agent's, carries it too) and announced now."""
        self._registration["port_mapping"] = report
        self._wake.set()

    async def confirm_reachability(self, nonce: str) -> bool:
        """Posts a probe's nonce (docs/protocol.md §2.9); True when the server verified."""
        if self.identity is None:
            return False
        try:
            response = await self._post(
                f"/v1/nodes/{self.identity.node_id}/reachability",
                json=ReachabilityConfirm(nonce=nonce).model_dump(mode="json"),
                token=self.identity.node_token,
            )
        except _Transient as exc:
            log.warning("cannot confirm a reachability probe", extra={"why": str(exc)})
            return False
        if response.status_code != 200:
            log.info("probe not confirmed", extra={"why": _error_message(response)})
            return False
        return bool(response.json().get("verified"))

    async def aclose(self) -> None:
        await self._client.aclose()

    # ---- registration ------------------------------------------------------------------

    async def register(self) -> Identity:
        """Registers once; raises EnrollmentRejected/ServerApiError (fatal) or _Transient."""
        credentials: list[tuple[str, str]] = []
        if self.identity is not None:
            credentials.append(("node token", self.identity.node_token))
        if self._enroll_key:
            credentials.append(("enrollment key", self._enroll_key))
        if not credentials:
            raise EnrollmentRejected(
                "this node has no identity yet: give an enrollment key "
                "(--enroll-key hge_… from `bosonserver enroll create`)"
            )
        for kind, token in credentials:
            body = dict(self._registration)
            proof = await self._key_proof(token)
            if proof is not None:
                body["proof"] = proof
            response = await self._post("/v1/nodes/register", json=body, token=token)
            if response.status_code in (200, 201):
                return await self._store(response)
            if response.status_code in (401, 403):
                log.warning(
                    "the server rejected the %s", kind, extra={"reason": _error_message(response)}
                )
                continue
            if 400 <= response.status_code < 500:
                raise ServerApiError(
                    f"the server refused the registration: {_error_message(response)}"
                )
        raise EnrollmentRejected(
            f"the server rejected the enrollment key: {_error_message(response)}; "
            "create a new one with `bosonserver enroll create` and pass it with --enroll-key"
            if self._enroll_key
            else "the server no longer accepts this node's token and no enrollment key was "
            "given: pass --enroll-key hge_…"
        )

    async def _key_proof(self, token: str) -> dict[str, str] | None:
        """A fresh challenge answered with our private key (docs/protocol.md §2.1); None
        without a key or from a server that predates the proof (404: it registers without)."""
        if self._private_key is None:
            return None
        try:
            response = await self._client.post(
                "/v1/nodes/challenge", headers={"authorization": f"Bearer {token}"}
            )
        except httpx.HTTPError as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from None
        if response.status_code in (401, 403, 404, 405):
            # 404/405: a server older than the proof. 401/403: this credential is refused; the
            # registration without a proof gets the same refusal and tries the next one.
            return None
        if response.status_code != 200:
            raise _Transient(_error_message(response), rest.retry_after(response))
        try:
            challenge = KeyChallenge.model_validate(response.json())
            mac = keyproof.node_proof(self._private_key.raw, challenge.server_key, challenge.nonce)
        except (ValueError, ValidationError) as exc:
            raise _Transient(f"unexpected challenge answer: {exc}") from None
        return {"nonce": challenge.nonce, "mac": mac}

    async def _store(self, response: httpx.Response) -> Identity:
        try:
            answer = NodeRegisterResponse.model_validate(response.json())
        except (ValueError, ValidationError) as exc:
            raise _Transient(f"unexpected registration answer: {exc}") from None
        ident = Identity(
            server=self.server,
            node_id=answer.node_id,
            node_token=answer.node_token,
            relay_url=answer.relay_url,
            heartbeat_interval_s=max(1.0, answer.heartbeat_interval_s),
        )
        payload = {
            "server": ident.server,
            "node_id": ident.node_id,
            "node_token": ident.node_token,
            "relay_url": ident.relay_url,
            "heartbeat_interval_s": ident.heartbeat_interval_s,
        }
        write_secret_file(self._state_dir / IDENTITY_FILE, json.dumps(payload) + "\n")
        self.identity = ident
        self.status.node_id = ident.node_id
        self.status.registrations += 1
        log.info("registered with the server", extra=ident.redacted())
        if self._on_identity is not None:
            await self._on_identity(ident)
        return ident

    async def try_register(self) -> bool:
        """One registration attempt: True when registered, False when the server cannot be
        reached now (the loop in :meth:`run` keeps trying); fatal refusals raise."""
        try:
            await self.register()
        except _Transient as exc:
            self.status.state = "unreachable"
            self.status.last_error = str(exc)
            log.warning("server unreachable at start; will keep trying", extra={"why": str(exc)})
            return False
        self._fresh = True
        return True

    # ---- heartbeat ---------------------------------------------------------------------

    async def heartbeat(self) -> float:
        """Sends one heartbeat; returns the next interval. Raises _Forgotten or _Transient."""
        assert self.identity is not None
        try:
            body = await self._heartbeat_body()
        except Exception as exc:  # metrics are best effort; the heartbeat itself must go out
            log.warning("cannot collect metrics", extra={"why": f"{type(exc).__name__}: {exc}"})
            body = {}
        if self._relay_targets:
            # Timed now, sent now: the server picks a session's relay by both legs' RTT.
            rtts = await measure_all(self._relay_targets)
            if rtts:
                body["relay_rtt_ms"] = rtts
        response = await self._post(
            f"/v1/nodes/{self.identity.node_id}/heartbeat",
            json=body,
            token=self.identity.node_token,
        )
        # 401/404: the server lost or revoked us; 403: our token names another node;
        # 409 node_stopped: we were deregistered. Registering again fixes each of them.
        if response.status_code in (401, 403, 404, 409):
            raise _Forgotten(_error_message(response))
        if response.status_code == 422:
            # Our metrics did not validate: a bug on one side; the link itself is fine.
            log.error(
                "the server rejected the heartbeat", extra={"reason": _error_message(response)}
            )
            return self.identity.heartbeat_interval_s
        if response.status_code != 200:
            raise _Transient(_error_message(response), rest.retry_after(response))
        try:
            answer = response.json()
            interval = float(answer.get("heartbeat_interval_s"))
        except (ValueError, TypeError, AttributeError):
            answer, interval = {}, self.identity.heartbeat_interval_s
        self._relay_targets = _relay_targets(answer)
        self.status.heartbeats += 1
        return max(1.0, min(interval, 300.0))

    async def _post(self, path: str, *, json: dict[str, Any], token: str) -> httpx.Response:
        try:
            response = await self._client.post(
                path, json=json, headers={"authorization": f"Bearer {token}"}
            )
        except httpx.HTTPError as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from None
        if response.status_code >= 500 or response.status_code == 429:
            raise _Transient(_error_message(response), rest.retry_after(response))
        return response

    # ---- the loop ----------------------------------------------------------------------

    async def run(self) -> None:
        """Registers and heartbeats until cancelled; returns only by raising a fatal error."""
        need_register = not self._fresh
        while True:
            try:
                if need_register or self.identity is None:
                    await self.register()
                    need_register = False
                interval = await self.heartbeat()
                self._ok()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), interval)
                self._wake.clear()
            except _Forgotten as exc:
                log.warning(
                    "the server forgot this node; registering again", extra={"why": str(exc)}
                )
                need_register = True
                self.status.last_error = f"forgotten: {exc}"
            except _Transient as exc:
                delay = exc.retry_after or self._backoff.next_delay()
                if self.status.state != "unreachable":
                    log.warning(
                        "server unreachable; retrying with backoff", extra={"why": str(exc)}
                    )
                self.status.state = "unreachable"
                self.status.last_error = str(exc)
                await asyncio.sleep(delay)
            except ServerApiError as exc:
                self.status.state = "rejected"
                self.status.last_error = str(exc)
                raise

    def _ok(self) -> None:
        if self.status.state != "online":
            log.info("server API online", extra={"node_id": self.status.node_id})
        self.status.state = "online"
        self.status.last_ok = time.time()
        self.status.last_error = None
        self._backoff.reset()

    async def deregister(self, timeout_s: float = 5.0) -> bool:
        """DELETE /v1/nodes/{id}; True when the server confirmed. Never raises."""
        self.status.state = "stopped"
        if self.identity is None:
            return False
        try:
            response = await asyncio.wait_for(
                self._client.delete(
                    f"/v1/nodes/{self.identity.node_id}",
                    headers={"authorization": f"Bearer {self.identity.node_token}"},
                ),
                timeout_s,
            )
        except (httpx.HTTPError, TimeoutError) as exc:
            log.warning("could not deregister", extra={"why": f"{type(exc).__name__}: {exc}"})
            return False
        ok = response.status_code in (200, 204, 404)
        if ok:
            log.info("deregistered", extra={"node_id": self.identity.node_id})
        else:
            log.warning("deregistration refused", extra={"why": _error_message(response)})
        return ok
