"""Every numeric option is a finite number within its documented range, from each source
(TOML file, KOMM_* variable, flag), and the error names the option and where it came from;
the SQLite replica's refresher survives values no configuration lets through."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from komm_policy.cli import main
from komm_policy.config import OPTIONS, ConfigError, load_config
from komm_policy.config_options import DAY, MAXIMA, limit
from komm_policy.directory.sqlite import SqliteDirectory, create_database, poll_wait

NUMERIC = [o for o in OPTIONS if limit(o) is not None]
SECONDS = [o for o in NUMERIC if isinstance(limit(o), float)]


@pytest.fixture
def base_env(tmp_path: Path) -> dict[str, str]:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "10-rules.policy").write_text("stage connect { default accept }\n")
    return {"KOMM_POLICIES": str(policies), "KOMM_DIRECTORY": "memory:demo"}


def problems(env: dict[str, str], path: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    return str(info.value)


def test_every_number_option_has_a_limit() -> None:
    assert {o.name for o in NUMERIC} >= {"refresh_interval", "max_staleness", "workers",
                                         "header_timeout", "log_sqlite_max_rows"}
    assert all(limit(o) == DAY for o in SECONDS if o.name not in MAXIMA)


@pytest.mark.parametrize("option", SECONDS, ids=lambda o: o.name)
@pytest.mark.parametrize("text", ["inf", "-inf", "nan", "1e300", "1e999", "Infinity"])
def test_a_seconds_option_refuses_non_finite_and_huge_values_from_the_environment(
        base_env: dict[str, str], option: object, text: str) -> None:
    message = problems({**base_env, option.env: text})
    assert f"{option.env}: " in message
    if text in ("1e300",):
        assert f"is too large (at most {int(limit(option)):,} seconds)" in message
    else:
        assert "expected a finite number" in message


@pytest.mark.parametrize("option", NUMERIC, ids=lambda o: o.name)
def test_each_limit_is_inclusive(base_env: dict[str, str], option: object) -> None:
    largest = int(limit(option))
    env = {**base_env, option.env: str(largest + 1)}
    assert f"{option.env}: '{largest + 1}' is too large (at most {largest:,}" in problems(env)
    value = load_config(env={**base_env, option.env: str(largest)}, only=())
    assert getattr(value, option.name) == largest


def test_the_testers_file_names_file_section_and_key(base_env: dict[str, str],
                                                     tmp_path: Path) -> None:
    config = tmp_path / "komm.toml"
    config.write_text("[directory]\nrefresh_interval = 1e300\nmax_staleness = 1e300\n"
                      "[server]\nheader_timeout = inf\nidle_timeout = nan\n")
    message = problems(base_env, config)
    assert f"{config} [directory] refresh_interval: 1e+300 is too large (at most 86,400 " \
           "seconds)" in message
    assert f"{config} [directory] max_staleness: 1e+300 is too large" in message
    assert f"{config} [server] header_timeout: expected a finite number, got inf" in message
    assert f"{config} [server] idle_timeout: expected a finite number, got nan" in message


@pytest.mark.parametrize("flag", ["--header-timeout", "--shutdown-timeout"])
@pytest.mark.parametrize("text", ["inf", "nan", "1e300"])
def test_serve_flags_refuse_them_before_starting(
        capsys: pytest.CaptureFixture[str], base_env: dict[str, str],
        monkeypatch: pytest.MonkeyPatch, flag: str, text: str) -> None:
    for name, value in base_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("KOMM_CONFIG", raising=False)
    assert main(["serve", flag, text]) == 2
    err = capsys.readouterr().err
    assert f"{flag}: " in err
    assert ("too large" if text == "1e300" else "expected a finite number") in err


@pytest.mark.parametrize(("interval", "expected"), [
    (0.5, 0.5), (1e300, 86_400.0), (float("inf"), 86_400.0), (float("nan"), 1.0),
    (-1.0, 1.0), (0.0, 1.0)])
def test_poll_wait(interval: float, expected: float) -> None:
    assert poll_wait(interval) == expected


def test_the_refresher_survives_huge_intervals_and_its_own_errors(tmp_path: Path) -> None:
    db = tmp_path / "komm.sqlite3"
    create_database(db)
    died: list[BaseException] = []
    previous = threading.excepthook
    threading.excepthook = lambda args: died.append(args.exc_value)
    try:
        huge = SqliteDirectory(db, refresh_interval=1e300, max_staleness=1e300)
        time.sleep(0.1)
        assert huge._thread is not None and huge._thread.is_alive()
        huge.close()
        directory = SqliteDirectory(db, refresh_interval=0.02, max_staleness=5.0,
                                    start=False)
        real = directory.refresh
        calls = 0

        def failing_once() -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("a bug in the refresh")
            real()

        directory.refresh = failing_once  # type: ignore[method-assign]
        directory.start()
        deadline = time.monotonic() + 5.0
        while calls < 3:
            assert time.monotonic() < deadline, "the refresher stopped"
            time.sleep(0.02)
        assert directory.health.unexpected_errors == 1
        assert directory._thread is not None and directory._thread.is_alive()
        assert "a bug in the refresh" in (directory.last_error or "") or directory.available
        directory.close()
    finally:
        threading.excepthook = previous
    assert died == []
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM blocked_ips").fetchone() == (0,)
