"""What the operator's dashboard (bosonserver /admin) and the node owner's page share: the
live-update script, the style sheet and the table macro, so that the one script that writes
values from nodes and clients into a page (with ``textContent`` only) exists once.

Each app serves :data:`STATIC_FILES` under its own prefix with :func:`static_path` and renders
its templates with :func:`environment`, which finds ``macros.html`` here.
"""

from __future__ import annotations

from pathlib import Path

from jinja2 import ChoiceLoader, Environment, PackageLoader, select_autoescape

__all__ = ["STATIC_FILES", "environment", "static_path"]

STATIC_FILES = {"live.js": "text/javascript", "style.css": "text/css"}
_STATIC = Path(__file__).parent / "static"


def environment(package: str) -> Environment:
    """A Jinja2 environment for ``package``'s templates plus the shared ones, autoescaping
    everything (strings included)."""
    return Environment(
        loader=ChoiceLoader(
            [PackageLoader(package, "templates"), PackageLoader(__name__, "templates")]
        ),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )


def static_path(name: str) -> tuple[Path, str] | None:
    """The file and media type of a shared asset, or None for any other name."""
    media = STATIC_FILES.get(name)
    return None if media is None else (_STATIC / name, media)
