"""Path segments that only match well-formed identifiers.

``/v1/nodes/{node_id}`` would otherwise also match ``/v1/nodes/register``: a ``DELETE`` there
reached the deregistration handler and failed its id pattern with a 422, where HTTP says an
existing path with the wrong method is a 405 (and a malformed id is simply no such resource,
404). A Starlette convertor per identifier makes the router itself tell these apart; the
OpenAPI schema still shows ``{node_id}`` with its pattern (from the ``Path`` annotation).
"""

from __future__ import annotations

from starlette.convertors import Convertor, register_url_convertor

from higgs.protocol.api import CLIENT_NAME_PATTERN, NODE_ID_PATTERN, SESSION_ID_PATTERN

__all__ = ["CLIENT_NAME", "NODE_ID", "SESSION_ID"]


class _PatternConvertor(Convertor[str]):
    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


def _register(key: str, pattern: str) -> str:
    convertor = type(f"{key}_convertor", (_PatternConvertor,), {"regex": pattern[1:-1]})
    register_url_convertor(key, convertor())
    return key


NODE_ID = _register("node_id", NODE_ID_PATTERN)
SESSION_ID = _register("session_id", SESSION_ID_PATTERN)
CLIENT_NAME = _register("client_name", CLIENT_NAME_PATTERN)
