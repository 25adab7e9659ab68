"""The ``lab`` fixture: a fresh lab per test, torn down always, checked to leave nothing
(``shared_lab``: one per module)."""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Iterator

import pytest

from higgs.lab import secretscan
from higgs.lab.lab import Lab
from higgs.lab.plan import LabPlan


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
