"""A token no request could send (a tester's finding): `KOMM_TOKEN=tökén` started a service
that looked ready and answered every request 401, since the hook compares a Bearer
header's bytes (read as latin-1) with the token's UTF-8.  Now a token outside visible ASCII
(0x21-0x7E: non-ASCII, a space, a control character) is refused at start, exit status 2,
named by where it was set and never printed; every visible ASCII character still works."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from komm_policy.config_tokens import token_alphabet_problem

from .serverproc import Deployment, ServerProcess
from .test_connections import SEED
from .test_ops_config_sources import env, serve  # noqa: F401 - env is a fixture

SECRET = "geheim-tökén"
NON_ASCII = "holds a non-ASCII character (character 9 of 12): a token is visible ASCII " \
            "(0x21-0x7E), since no request could send it in a header otherwise"


def test_a_real_serve_start_refuses_a_non_ascii_token(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KOMM_")}
    done = subprocess.run(
        [sys.executable, "-m", "komm_policy", "serve", "--host", "127.0.0.1", "--port", "0",
         "--policies", str(deployment.policies),
         "--directory", f"sqlite:{deployment.database}",
         "--log-jsonl", str(deployment.log_file)],
        env={**environ, "KOMM_TOKEN": SECRET}, cwd=tmp_path, capture_output=True,
        timeout=60, check=False)
    output = (done.stdout + done.stderr).decode("utf-8", "replace")
    assert done.returncode == 2, output
    assert f"  - KOMM_TOKEN: {NON_ASCII}\n" in output
    assert "Traceback" not in output
    assert SECRET not in output and "tökén" not in output and "geheim" not in output


@pytest.mark.parametrize(("token", "kind", "position"), [
    (SECRET, "a non-ASCII character", 9), ("two words", "a space", 4),
    ("tab\there", "a control character", 4), ("nul\x00", "a control character", 4),
    ("del\x7f", "a control character", 4),
])
def test_every_source_of_the_token_is_named(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], env: pytest.MonkeyPatch,  # noqa: F811
        token: str, kind: str, position: int) -> None:
    reason = f"holds {kind} (character {position} of {len(token)}): a token is visible ASCII"
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n", encoding="utf-8")
    config = tmp_path / "komm.toml"
    toml_value = token.replace("\\", "\\\\").replace("\t", "\\t").replace("\x00", "\\u0000")
    toml_value = toml_value.replace("\x7f", "\\u007f")
    errors = []
    if "\x00" not in token:  # no environment variable can hold a NUL
        env.setenv("KOMM_TOKEN", token)
        errors.append(("KOMM_TOKEN:", serve(capsys)))
        env.delenv("KOMM_TOKEN")
    errors.append(("--token:", serve(capsys, f"--token={token}")))
    config.write_text(f'[server]\ntoken = "{toml_value}"\n', encoding="utf-8")
    errors.append((f"{config} [server] token:", serve(capsys, "--config", str(config))))
    config.write_text(f'[server]\ntoken_file = "{token_file}"\n')
    errors.append((f"{config} [server] token_file: token file {token_file}",
                   serve(capsys, "--config", str(config))))
    env.setenv("KOMM_TOKEN_FILE", str(token_file))
    errors.append((f"KOMM_TOKEN_FILE: token file {token_file}", serve(capsys)))
    for origin, err in errors:
        assert f"  - {origin} {reason}" in err, (origin, err)
        assert token not in err


def test_the_spacetimedb_tokens_are_held_to_the_same_alphabet(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        env: pytest.MonkeyPatch) -> None:  # noqa: F811
    env.setenv("KOMM_LOG_SPACETIMEDB_TOKEN", SECRET)
    err = serve(capsys)
    assert f"  - KOMM_LOG_SPACETIMEDB_TOKEN: {NON_ASCII}" in err
    assert SECRET not in err


def test_only_what_no_header_carries_is_refused() -> None:
    visible = "".join(chr(c) for c in range(0x21, 0x7F))
    assert token_alphabet_problem(visible) is None
    for c in [*range(0x21), *range(0x7F, 0x100), 0x20AC, 0x1F600]:
        assert token_alphabet_problem(f"ok{chr(c)}") is not None, hex(c)


def test_a_token_of_every_visible_ascii_character_works_on_a_real_server(
        tmp_path: Path) -> None:
    token = "".join(chr(c) for c in range(0x21, 0x7F))
    with ServerProcess(Deployment(tmp_path), "--no-watch", KOMM_TOKEN=token) as server:
        assert server.post(SEED, headers={"authorization": f"Bearer {token}"}
                           ).status_code == 200
        basic = base64.b64encode(f"stalwart:{token}".encode()).decode()
        assert server.post(SEED, headers={"authorization": f"Basic {basic}"}
                           ).status_code == 200
        assert server.post(SEED, headers={"authorization": f"Bearer {token[:-1]}"}
                           ).status_code == 401
