"""An empty SpacetimeDB token file is refused, naming the file (the tester's finding: it
was read as "no token", i.e. an anonymous identity that sees only public tables and whose
reducer calls a private table refuses) — at start of `serve`, in every `db` command, and
wherever the configuration is read again (all go through `load_config`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from komm_policy.config import ConfigError, load_config

from .conftest import POLICIES


@pytest.mark.parametrize("content", ["", "\n", "  \t\n"])
@pytest.mark.parametrize("variable", ["KOMM_SPACETIMEDB_TOKEN_FILE",
                                      "KOMM_LOG_SPACETIMEDB_TOKEN_FILE", "KOMM_TOKEN_FILE"])
def test_an_empty_token_file_is_refused_naming_it(tmp_path: Path, content: str,
                                                  variable: str) -> None:
    token = tmp_path / "stdb.token"
    token.write_text(content)
    with pytest.raises(ConfigError) as caught:
        load_config(env={"KOMM_POLICIES": str(POLICIES),
                         "KOMM_DIRECTORY": "spacetimedb://127.0.0.1:3000/komm",
                         variable: str(token)})
    assert f"{variable}: token file {token} is empty" in str(caught.value)


def test_an_empty_token_file_in_the_toml_file_is_refused(tmp_path: Path) -> None:
    token = tmp_path / "stdb.token"
    token.write_text("")
    toml = tmp_path / "komm.toml"
    toml.write_text(f'[directory]\ntoken_file = "{token}"\n')
    with pytest.raises(ConfigError, match=f"token file {token} is empty"):
        load_config(toml, env={"KOMM_POLICIES": str(POLICIES),
                               "KOMM_DIRECTORY": "spacetimedb://127.0.0.1:3000/komm"})


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    token = tmp_path / "stdb.token"
    token.write_text("\n")
    env = {**os.environ, "KOMM_SPACETIMEDB_TOKEN_FILE": str(token)}
    return subprocess.run([sys.executable, "-m", "komm_policy", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)


def test_serve_refuses_to_start_with_an_empty_token_file(tmp_path: Path) -> None:
    done = run(tmp_path, "serve", "--port", "0", "--policies", str(POLICIES),
               "--directory", "spacetimedb://127.0.0.1:9/komm")
    assert done.returncode != 0
    assert f"token file {tmp_path / 'stdb.token'} is empty" in done.stderr


def test_db_commands_refuse_an_empty_token_file(tmp_path: Path) -> None:
    done = run(tmp_path, "db", "schema", "--directory", "spacetimedb://127.0.0.1:9/komm")
    assert done.returncode == 2
    assert f"token file {tmp_path / 'stdb.token'} is empty" in done.stderr
