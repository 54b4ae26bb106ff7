"""Shared fixtures: paths to the shipped policies and the captured Stalwart payloads."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"


def _fixture_dir() -> Path:
    """Stalwart sample payloads: `tests/fixtures/stalwart` (copied from the shared set)."""
    return Path(os.environ.get("KOMM_STALWART_FIXTURES", ROOT / "tests" / "fixtures" /
                               "stalwart"))


@pytest.fixture(scope="session")
def stalwart_fixtures() -> dict[str, bytes]:
    directory = _fixture_dir()
    files = sorted(directory.glob("*.json"))
    assert files, f"no Stalwart fixtures in {directory}"
    return {f.stem: f.read_bytes() for f in files}


@pytest.fixture(autouse=True)
def _no_server_outlives_its_test() -> Iterator[None]:
    """Stop a `komm-policy serve` a test started and left running (an assertion failed
    before its own stop): module-scoped servers are started before this runs, so they
    stay for the module's other tests."""
    from .serverproc import ServerProcess

    before = len(ServerProcess.started)
    yield
    left = ServerProcess.started[before:]
    del ServerProcess.started[before:]
    for server in left:
        if server.proc is not None and server.proc.poll() is None:
            server.stop()
