from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.osnet.namespaces import Namespaces


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    spaces = Namespaces()
    try:
        yield spaces
    finally:
        spaces.teardown()
