"""The hardened systemd unit in `contrib/` (issue 14 §5): its hardening settings are
there, and `systemd-analyze verify` accepts it with ExecStart pointing at the installed
console script."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

UNIT = ROOT / "contrib" / "komm-policy.service"


def service_settings() -> dict[str, list[str]]:
    """Every `Key=value` of the [Service] section (repeated keys kept in order)."""
    settings: dict[str, list[str]] = {}
    section = None
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_is_hardened() -> None:
    settings = service_settings()
    assert settings["NoNewPrivileges"] == ["yes"]
    assert settings["ProtectSystem"] == ["strict"]
    assert settings["PrivateTmp"] == ["yes"]
    assert settings["CapabilityBoundingSet"] == [""]
    state = settings["StateDirectory"][0].split()
    assert state == ["komm-policy", "komm-policy/spool", "komm-policy/log"]
    environment = dict(value.split("=", 1) for value in settings["Environment"])
    # The store, the spool and the log files are all under the state directory: with
    # ProtectSystem=strict nothing else is writable.
    assert environment["KOMM_DIRECTORY"] == "sqlite:/var/lib/komm-policy/komm.sqlite3"
    assert environment["KOMM_LOG_SPOOL"] == "/var/lib/komm-policy/spool"
    assert environment["KOMM_LOG_JSONL"].startswith("/var/lib/komm-policy/log/")
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert "%d/token" in environment["KOMM_TOKEN_FILE"]


def test_unit_environment_names_real_options() -> None:
    from komm_policy.config import OPTIONS

    known = {option.env for option in OPTIONS} | {"KOMM_TOKEN_FILE", "KOMM_CONFIG"}
    names = {value.split("=", 1)[0] for value in service_settings()["Environment"]}
    assert names <= known, names - known


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (systemd not on this machine)")
    script = Path(sys.executable).with_name("komm-policy")
    if not script.exists():
        pytest.skip(f"the komm-policy console script is not installed at {script}")
    unit = tmp_path / UNIT.name
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/komm-policy serve" in text
    unit.write_text(text.replace("ExecStart=/usr/local/bin/komm-policy",
                                 f"ExecStart={script}"))
    done = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True,
                          text=True, timeout=60)
    # verify exits 1 on some problems (a missing ExecStart) but only prints others (an
    # unknown key, a bad value), so its output must be empty too.
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr.strip() == "" and done.stdout.strip() == "", done.stdout + done.stderr
    broken = tmp_path / "broken.service"
    broken.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystem=wrong"))
    rejected = subprocess.run([analyze, "verify", "--man=no", str(broken)],
                              capture_output=True, text=True, timeout=60)
    assert "Failed to parse protect system value" in rejected.stderr  # the check can fail


def test_unit_parses_as_ini() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string(UNIT.read_text())
    assert set(parser.sections()) == {"Unit", "Service", "Install"}
