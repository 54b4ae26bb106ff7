"""The `[log]` options reach the decision log's settings (`hook.service.log_settings`,
`reducer_spec`) from each source — the TOML file, the `KOMM_*` environment, the `serve`
flags — and, unset, give the decision log's own defaults (one source of truth:
`decisionlog.settings.CONFIGURED`, `ReducerSpec`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from komm_policy.cli import build_parser
from komm_policy.cli.serve import flag_overrides
from komm_policy.config import OPTIONS, load_config
from komm_policy.decisionlog import LogSettings, ReducerSpec
from komm_policy.decisionlog.settings import CONFIGURED
from komm_policy.hook.service import log_settings, reducer_spec

from .conftest import POLICIES

BASE = {"KOMM_POLICIES": str(POLICIES), "KOMM_DIRECTORY": "memory:demo"}
BY_NAME = {o.name: o for o in OPTIONS}
# A value unlike the default for each setting a [log] option sets.
VALUES: dict[str, Any] = {"spool": "elsewhere/spool", "fsync_interval": 0.5,
                          "on_spool_error": "accept", "queue_max": 77, "spool_keep": 3.0,
                          "max_backlog_records": 123, "max_backlog_age": 9.0,
                          "writer_sched_idle": True}


def test_every_configured_setting_has_a_test_value_unlike_its_default() -> None:
    assert set(VALUES) == set(CONFIGURED)
    defaults = LogSettings()
    assert all(getattr(defaults, name) != value for name, value in VALUES.items())


def expected(name: str, value: Any) -> Any:
    return str(Path(value).resolve()) if name == "spool" else value


def test_unset_options_give_the_decision_logs_own_defaults() -> None:
    config = load_config(env={**BASE, "KOMM_LOG_SPACETIMEDB": "spacetimedb://h:3000/db"})
    settings, defaults = log_settings(config), LogSettings()
    for name in CONFIGURED:
        assert getattr(settings, name) == expected(name, getattr(defaults, name)), name
    spec, default_spec = reducer_spec(config), ReducerSpec(url="")
    for name in ("reducer", "args", "batch", "max_dead_letters"):
        assert getattr(spec, name) == getattr(default_spec, name), name
    assert spec.dead_letter == str(Path(default_spec.dead_letter).resolve())


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else repr(value)


def test_each_log_option_from_the_toml_file(tmp_path: Path) -> None:
    toml = tmp_path / "komm.toml"
    toml.write_text("[log]\n" + "".join(
        f"{BY_NAME[option].key} = {toml_value(VALUES[name])}\n"
        for name, option in CONFIGURED.items()))
    settings = log_settings(load_config(toml, env=BASE))
    for name, value in VALUES.items():
        assert getattr(settings, name) == expected(name, value), name


def test_each_log_option_from_the_environment() -> None:
    env = {**BASE, **{BY_NAME[option].env: str(VALUES[name])
                      for name, option in CONFIGURED.items()}}
    settings = log_settings(load_config(env=env), worker="3")
    for name, value in VALUES.items():
        want = expected(name, value) if name != "spool" else str(
            (Path(value) / "worker-3").resolve())
        assert getattr(settings, name) == want, name


@pytest.mark.parametrize("source", ["toml", "env"])
def test_flags_override_the_file_and_the_environment(tmp_path: Path, source: str) -> None:
    toml = tmp_path / "komm.toml"
    toml.write_text('[log]\nspool = "from-file"\nspacetimedb_max_dead_letters = 5\n')
    env = {**BASE, "KOMM_LOG_SPACETIMEDB": "spacetimedb://h:3000/db"}
    if source == "env":
        env.update(KOMM_LOG_SPOOL="from-env", KOMM_LOG_SPACETIMEDB_MAX_DEAD_LETTERS="6")
    args = build_parser().parse_args(["serve", "--log-spool", "from-flag",
                                      "--log-spacetimedb-max-dead-letters", "7"])
    config = load_config(toml, env=env, overrides=flag_overrides(args))
    assert log_settings(config).spool == str(Path("from-flag").resolve())
    assert reducer_spec(config).max_dead_letters == 7
    unflagged = load_config(toml, env=env,
                            overrides=flag_overrides(build_parser().parse_args(["serve"])))
    assert log_settings(unflagged).spool == str(
        Path("from-env" if source == "env" else "from-file").resolve())
    assert reducer_spec(unflagged).max_dead_letters == (6 if source == "env" else 5)
