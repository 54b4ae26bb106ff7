"""`stalwart-config` refuses what Stalwart would read differently: a configuration macro
(`%{…}%`) or a bad percent-escape in the URL, an environment variable name or file path
that would break the `%{env:…}%`/`%{file:…}%` macro, a timeout beyond a day."""

from __future__ import annotations

import json
import tomllib

import pytest

from komm_policy.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("argv", "expected"), [
    (["--url", "http://h/%{env:SECRET}%"], "holds `%{` or `}%`: Stalwart would expand it"),
    (["--url", "http://h/a}%41"], "holds `%{` or `}%`"),
    (["--url", "http://h/a%zz"], "has a `%` that does not start a percent-escape"),
    (["--url", "http://h/a%2"], "has a `%` that does not start a percent-escape"),
    (["--url", "http://h/100%"], "has a `%` that does not start a percent-escape"),
    (["--url", "http://h:3002/?q=%g0"], "has a `%` that does not start a percent-escape"),
    (["--token-env", "BAD NAME"], "--token-env 'BAD NAME' is not an environment variable"),
    (["--token-env", "9LIVES"], "is not an environment variable name"),
    (["--token-env", "A-B"], "is not an environment variable name"),
    (["--token-env", "X}%"], "is not an environment variable name"),
    (["--token-env", ""], "is not an environment variable name"),
    (["--token-file", "/etc/x}%y"], "--token-file '/etc/x}%y' holds `%{` or `}%`"),
    (["--token-file", "/etc/%{env:HOME}%/t"], "holds `%{` or `}%`"),
    (["--token-file", "/etc/a\nb"], "has control characters"),
    (["--token-file", " "], "--token-file must not be empty"),
    (["--token", "se%{cret"], "--token (the token) holds `%{` or `}%`"),
    (["--timeout", "99999999999999999999s"], "is too long (at most 1 day"),
    (["--timeout", "86401s"], "is too long"),
])
@pytest.mark.parametrize("form", ["toml", "json"])
def test_refused_with_a_clear_error(capsys: pytest.CaptureFixture[str], argv: list[str],
                                    expected: str, form: str) -> None:
    code, out, err = run(capsys, "stalwart-config", "--format", form, *argv)
    assert (code, out) == (2, "")
    assert f"komm-policy stalwart-config: {expected}" in err or expected in err
    assert "Traceback" not in err
    if "--token" in argv:
        assert "se%{cret" not in err  # the token itself is not echoed


@pytest.mark.parametrize(("argv", "check"), [
    (["--url", "http://h:3002/a%7Bb%7D%25"], ("url", "http://h:3002/a%7Bb%7D%25")),
    (["--token-env", "_KOMM_TOKEN2"], ("secret", "%{env:_KOMM_TOKEN2}%")),
    (["--token-file", "/run/secrets/komm token"], ("secret",
                                                    "%{file:/run/secrets/komm token}%")),
    (["--timeout", "86400s"], ("timeout", "86400s")),
    (["--timeout", "1440m"], ("timeout", "86400s")),
])
def test_the_edges_that_stay_valid(capsys: pytest.CaptureFixture[str], argv: list[str],
                                   check: tuple[str, str]) -> None:
    code, out, err = run(capsys, "stalwart-config", *argv)
    assert code == 0, err
    hook = tomllib.loads(out)["session"]["hook"]["komm"]
    key, value = check
    assert (hook["auth"][key] if key == "secret" else hook[key]) == value
    code, out, _ = run(capsys, "stalwart-config", "--format", "json", *argv)
    assert code == 0 and json.loads(out)["url"]


# -- small findings beside stalwart-config: replay's version reason, serve --help ------

RECORD = {"stage": "rcpt", "client_ip": "192.0.2.141", "sender": "jane@solawi.example",
          "recipients": ["buchhaltung@solawi.example"], "action": "accept"}


@pytest.mark.parametrize(("version", "reason"), [
    ("2", "malformed record_version"), (2.0, "malformed record_version"),
    (True, "malformed record_version"), (None, "malformed record_version"),
    (-1, "malformed record_version"), ([2], "malformed record_version"),
    (3, "record_version newer than this komm-policy reads"),
])
def test_replay_files_a_malformed_version_as_malformed(version: object, reason: str) -> None:
    from komm_policy.replay import rebuild_request
    result = rebuild_request({**RECORD, "record_version": version})
    assert isinstance(result, str) and result.startswith(reason)
    assert not isinstance(rebuild_request({**RECORD, "record_version": 2}), str)


def test_serve_help_names_every_directory_kind(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for kind in ("sqlite:PATH", "spacetimedb://HOST:PORT/DB", "spacetimedb+https://HOST/DB",
                 "memory:demo", "memory:empty"):
        assert kind in text
