"""The ``lab`` fixture: a fresh lab per test, torn down always, checked to leave nothing
(``shared_lab``: one per module). For the modules that run the product in a lab:
:func:`system_fixtures` (its lab, server and node once per module, every client disconnected
after each test) and the helpers their tests share."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Generator, Iterator
from typing import Any

import pytest

from higgs.lab import secretscan
from higgs.lab.lab import Lab
from higgs.lab.plan import LabPlan
from tests.e2e.client_system import System, disconnect_all, needs_node, running_system

# The marks of a module that runs the product (bosonserver, higgsnode, higgsvpn) in a lab.
PRODUCT_MARKS = [pytest.mark.e2e, pytest.mark.root, needs_node]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report = outcome.get_result()
    # The logs live in the lab's work directory, which teardown removes: attach them now.
    # The lab is the ``lab`` fixture or the ``lab`` of another one (a module's system); a
    # module fixture that fails while it measures (setup) gets them too.
    if report.failed and call.when in ("setup", "call"):
        funcargs = getattr(item, "funcargs", {})
        labs = [funcargs.get("lab"), *(getattr(v, "lab", None) for v in funcargs.values())]
        lab = next((x for x in labs if isinstance(x, Lab)), None)
        if lab is not None:
            report.sections.append(("lab process logs", lab.log_tails(30)))


@contextlib.contextmanager
def built_lab(plan: LabPlan | None = None) -> Iterator[Lab]:
    """A lab (of ``plan``, default the standard one), torn down always, then checked to have
    left nothing and leaked no secret (for module-scoped fixtures too)."""
    lab = Lab(plan=plan).build()
    try:
        yield lab
    finally:
        lab.teardown()
    left = lab.leftovers()
    assert not left, f"lab {lab.names.stem} left behind: {left}"
    leaked = [str(f) for f in lab.secret_findings]
    assert not leaked, f"secrets in the logs of lab {lab.names.stem}: {leaked}"


@pytest.fixture
def lab() -> Iterator[Lab]:
    with built_lab() as lab:
        yield lab


@pytest.fixture(scope="module")
def shared_lab() -> Iterator[Lab]:
    """One lab for a whole module, for modules whose tests only look at the lab or put back
    what they change (a lab costs seconds to build): checked like the per-test one."""
    with built_lab() as lab:
        yield lab


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_lab_log() -> Iterator[None]:
    """Every lab of the session (also those a test builds itself) scans its logs at
    teardown (higgs.lab.secretscan); the session fails if any log held a token or a key."""
    before = len(secretscan.FINDINGS)
    yield
    leaked = [str(f) for f in secretscan.FINDINGS[before:]]
    assert not leaked, f"secrets in lab logs: {leaked}"


def each_test(system_fixture: str, name: str) -> Any:
    """A fixture called ``name``: the module's system of fixture ``system_fixture``, with
    every client disconnected after each test, so that none stays connected into the next.
    Not for a parametrized ``system_fixture``: that one must be a declared dependency."""

    @pytest.fixture(name=name)
    def each(request: pytest.FixtureRequest) -> Iterator[System]:
        system: System = request.getfixturevalue(system_fixture)
        yield system
        disconnect_all(system)

    return each


def system_fixtures(label: str, **options: Any) -> tuple[Any, Any]:
    """The two fixtures of a module that shares one product lab between its tests:
    ``<label>_system`` (module scope: :func:`running_system` with ``options``, built once)
    and ``<label>`` (:func:`each_test`). Bind both at module level, under any names::

        direct_system, direct = system_fixtures("direct", direct=True)
    """

    @pytest.fixture(scope="module", name=f"{label}_system")
    def module_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
        with running_system(tmp_path_factory.mktemp(label), **options) as system:
            yield system

    return module_system, each_test(f"{label}_system", label)


def udp_relay_status(system: System) -> dict[str, Any]:
    """The UDP relay's status file in the server's data directory (ports, legs, mode)."""
    path = system.server.data_dir / "relay" / "relay-status.json"
    return dict(json.loads(path.read_text()))


def export_fields(text: str) -> dict[str, str]:
    """``key = value`` lines of a ``higgsvpn export`` (a WireGuard config), section-less."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(" = ")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def wg_setconf_text(text: str) -> str:
    """What ``wg setconf`` takes of an export: what wg-quick leaves after stripping its own
    keys (Address, DNS, MTU) and the comments."""
    keep = (
        line for line in text.splitlines() if not line.startswith(("Address", "DNS", "MTU", "#"))
    )
    return "\n".join(keep) + "\n"
