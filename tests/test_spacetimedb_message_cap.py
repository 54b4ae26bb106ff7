"""`[directory] max_message_bytes` (`KOMM_SPACETIMEDB_MAX_MESSAGE_BYTES`,
`--spacetimedb-max-message-bytes`): read from each source, its range checked at start
naming the source, and a real `komm-policy serve` on the SpacetimeDB double closes a
larger message with 1009 and counts it."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from komm_policy.cli import build_parser
from komm_policy.cli.serve import flag_overrides
from komm_policy.config import Config, ConfigError, load_config
from komm_policy.directory.spacetimedb import SpacetimeDirectory
from komm_policy.spacetimedb.limits import (
    MAX_MESSAGE_BYTES,
    MESSAGE_BYTES_MAX,
    MESSAGE_BYTES_MIN,
)
from komm_policy.spacetimedb.subscription import SubscriptionClient

from .bigupdate import DEMO_BLOCKED, blocked_rows
from .conftest import POLICIES
from .serverproc import Deployment, ServerProcess
from .spacetimedb_double import DoubleServer
from .spacetimedb_double.samples import directory_spec

BASE = {"KOMM_POLICIES": str(POLICIES), "KOMM_DIRECTORY": "memory:demo"}
VARIABLE = "KOMM_SPACETIMEDB_MAX_MESSAGE_BYTES"
FLAG = "--spacetimedb-max-message-bytes"


def test_one_default_for_the_config_the_replica_and_the_subscription() -> None:
    assert MAX_MESSAGE_BYTES == 128 * 1024 * 1024
    for default in (Config().spacetimedb_max_message_bytes,
                    SpacetimeDirectory.__init__.__kwdefaults__["max_message_bytes"],
                    SubscriptionClient.__init__.__kwdefaults__["max_message_bytes"]):
        assert default == MAX_MESSAGE_BYTES
    assert load_config(env=BASE).spacetimedb_max_message_bytes == MAX_MESSAGE_BYTES


def _from_flag(value: str) -> Config:
    args = build_parser().parse_args(["serve", f"{FLAG}={value}"])
    return load_config(env=BASE, overrides=flag_overrides(args))


def test_each_source_sets_it_and_the_flag_wins(tmp_path: Path) -> None:
    toml = tmp_path / "komm.toml"
    toml.write_text("[directory]\nmax_message_bytes = 2097152\n")
    assert load_config(toml, env=BASE).spacetimedb_max_message_bytes == 2 * 2**20
    env = {**BASE, VARIABLE: "3145728"}
    assert load_config(toml, env=env).spacetimedb_max_message_bytes == 3 * 2**20
    assert _from_flag("4194304").spacetimedb_max_message_bytes == 4 * 2**20


@pytest.mark.parametrize("value", [MESSAGE_BYTES_MIN, MESSAGE_BYTES_MAX])
def test_the_bounds_are_inclusive(value: int) -> None:
    config = load_config(env={**BASE, VARIABLE: str(value)})
    assert config.spacetimedb_max_message_bytes == value


@pytest.mark.parametrize(("value", "reason"), [
    (MESSAGE_BYTES_MIN - 1, f"{MESSAGE_BYTES_MIN - 1} is too small (min 1,048,576: 1 MiB)"),
    (128, "128 is too small (min 1,048,576: 1 MiB)"),
    (MESSAGE_BYTES_MAX + 1, f"'{MESSAGE_BYTES_MAX + 1}' is too large (at most 4,294,967,296)"),
])
def test_out_of_range_is_refused_at_start_naming_the_source(
        tmp_path: Path, value: int, reason: str) -> None:
    def problem(**kwargs: object) -> str:
        with pytest.raises(ConfigError) as info:
            load_config(**kwargs)  # type: ignore[arg-type]
        return str(info.value)

    assert f"  - {VARIABLE}: {reason}" in problem(env={**BASE, VARIABLE: str(value)})
    with pytest.raises(ConfigError) as info:
        _from_flag(str(value))
    assert f"  - {FLAG}: {reason}" in str(info.value)
    toml = tmp_path / "komm.toml"
    toml.write_text(f"[directory]\nmax_message_bytes = {value}\n")
    in_file = reason.replace(f"'{value}'", str(value))  # TOML gives a number, not text
    assert f"  - {toml} [directory] max_message_bytes: {in_file}" in problem(
        path=toml, env=BASE)


@pytest.mark.parametrize("value", ["1.5e6", "lots", "true"])
def test_not_a_whole_number_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match=f"{VARIABLE}: expected a whole number"):
        load_config(env={**BASE, VARIABLE: value})


def _metric(server: ServerProcess, name: str) -> float | None:
    for line in httpx.get(f"{server.url}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.split()[-1])
    return None


def test_a_lower_configured_cap_closes_with_1009_and_is_counted(tmp_path: Path) -> None:
    """A real service with the cap at 1 MiB (the flag) and a 40,000-row transaction
    (about 2 MB as sent): the double sees its subscription closed with 1009, /metrics
    counts it, the table keeps its rows.  At the default cap the same service applies it
    (the other big-update tests), so only the option can refuse it here."""
    with DoubleServer({"databases": {"komm": directory_spec()}}) as double:
        (tmp_path / "token").write_text(double.owner_token + "\n")
        (tmp_path / "service").mkdir()
        service = ServerProcess(Deployment(tmp_path / "service"), "--directory",
                                f"spacetimedb://127.0.0.1:{double.port}/komm",
                                f"{FLAG}={MESSAGE_BYTES_MIN}",
                                KOMM_SPACETIMEDB_TOKEN_FILE=str(tmp_path / "token"))
        with service:
            deadline = time.monotonic() + 20
            while httpx.get(f"{service.url}/readyz").status_code != 200:
                assert time.monotonic() < deadline, service.output()
                time.sleep(0.05)
            assert _metric(service, "komm_directory_oversized_messages_total") == 0
            double.control().tx("komm", "blocked_ips", inserts=blocked_rows(0, 40_000))
            deadline = time.monotonic() + 20
            while not _metric(service, "komm_directory_oversized_messages_total"):
                assert time.monotonic() < deadline, service.output()
                time.sleep(0.05)
            assert 1009 in double.control().state()["close_codes"]
            assert _metric(service, 'komm_directory_rows{table="blocked_ips"}') == \
                DEMO_BLOCKED
            assert f"larger than max_message_bytes ({MESSAGE_BYTES_MIN:,} bytes) was " \
                   "refused" in service.output()
