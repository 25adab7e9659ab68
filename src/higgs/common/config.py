"""Typed settings from a TOML file, the environment and flags, in that order of precedence.

Every program describes its settings as a pydantic model. :func:`load_settings` merges

1. the TOML file (if given),
2. environment variables ``<PREFIX><FIELD>`` (nested fields joined with ``__``),
3. explicit overrides (command-line flags; ``None`` means "not given"),

and validates the result. A bad value raises :class:`ConfigError` naming the field and where
the value came from, before anything on the host is touched.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from higgs.common.errors import ConfigError

__all__ = ["load_settings"]

M = TypeVar("M", bound=BaseModel)


def _set_path(target: dict[str, Any], path: list[str], value: Any) -> None:
    for key in path[:-1]:
        nxt = target.setdefault(key, {})
        if not isinstance(nxt, dict):
            nxt = {}
            target[key] = nxt
        target = nxt
    target[path[-1]] = value


def _env_values(model: type[BaseModel], prefix: str, environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    fields = {name.lower() for name in model.model_fields}
    for key, raw in environ.items():
        if not key.startswith(prefix):
            continue
        path = key[len(prefix) :].lower().split("__")
        if path and path[0] in fields:
            _set_path(values, path, raw)
    return values


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _origin(loc: tuple[Any, ...], file: Path | None, env_keys: set[str], flags: set[str]) -> str:
    dotted = ".".join(str(p) for p in loc)
    if dotted.split(".")[0] in flags:
        return "command line"
    if dotted.split(".")[0] in env_keys:
        return "environment"
    return f"config file {file}" if file else "defaults"


def load_settings(
    model: type[M],
    *,
    file: Path | None = None,
    env_prefix: str = "",
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> M:
    """Builds ``model`` from file, environment and overrides; raises ConfigError on bad input."""
    data: dict[str, Any] = {}
    if file is not None:
        try:
            with file.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {file} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file} is not valid TOML: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from exc
    env = _env_values(model, env_prefix, os.environ if environ is None else environ)
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    merged = _merge(_merge(data, env), flags)
    try:
        return model.model_validate(merged)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            field = ".".join(str(p) for p in loc) or "(top level)"
            where = _origin(loc, file, set(env), set(flags))
            problems.append(f"field '{field}' ({where}): {err['msg']}")
        raise ConfigError("invalid settings: " + "; ".join(problems)) from None
