"""Deeply nested policies never end in a RecursionError: long chains of policy-defined
functions (E156 past `MAX_EXPANDED_DEPTH`, positioned, naming the chain), 1,000s of nested
parentheses, `not`s (E013) and long `and`/`or` chains, through `check`, `fmt`, `test`, the
compiler and the decisions, `serve` at start-up and a SIGHUP reload (which keeps the running
policies).  A RecursionError that gets past the static bounds anyway is E156 at the rule,
definition or constant being checked (shown here by lowering the recursion limit).
"""

from __future__ import annotations

import inspect
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from komm_policy.cli import main
from komm_policy.formatter import format_text
from komm_policy.functions import MAX_EXPANDED_DEPTH
from komm_policy.policyset import compile_text
from komm_policy.runtime import decide

from .serverproc import Deployment, ServerProcess
from .test_hook_e2e import wait_for
from .test_runtime import request, summary

STAGE = ("stage rcpt {{\n    rule deep:\n        when {condition}\n"
         "        reject 550 5.7.1 \"deep\"\n\n    default accept\n}}\n")


def chain(count: int, rule_nots: int = 0) -> str:
    """`f0` tests the address; `f<i>` calls `f<i-1>`; the rule calls the last one."""
    lines = ['def f0(x) = x == "deep@example.org"']
    lines += [f"def f{i}(x) = f{i - 1}(x)" for i in range(1, count)]
    condition = "not " * rule_nots + f"f{count - 1}(sender)"
    return "\n".join(lines) + "\n\n" + STAGE.format(condition=condition)


def decision(text: str, sender: str) -> tuple[str, str | None, str | None]:
    result = compile_text(text, "deep.policy")
    assert result.policy_set is not None, [str(d) for d in result.errors]
    return summary(decide(result.policy_set, request("rcpt", sender=sender,
                                                     to=["a@example.org"]), None))


def errors_of(text: str) -> list[str]:
    return [f"{d.code} {d.span.line}:{d.span.column} {d.message}"
            for d in compile_text(text, "deep.policy").errors]


# ---------------------------------------------------------------------------------------
# Function chains


def test_a_chain_within_the_limit_checks_and_decides() -> None:
    text = chain(MAX_EXPANDED_DEPTH - 1)  # f<k> is k + 2 levels deep: f148 is 150
    assert decision(text, "deep@example.org") == ("reject", "550 5.7.1 deep", "deep")
    assert decision(text, "other@example.org") == ("accept", None, "default")


# 5,000 (past Python's recursion limit several times over) is checked in a real process below
@pytest.mark.parametrize("count", [MAX_EXPANDED_DEPTH, 200, 1000])
def test_a_chain_past_the_limit_is_E156_once_at_the_first_function_too_deep(
        count: int) -> None:
    found = errors_of(chain(count))
    first = MAX_EXPANDED_DEPTH - 1  # f<first> is the first over the limit
    # `def f149(x) = f148(x)` is line 150; the call `f148` starts at column 15
    assert len(found) == 1, found
    assert found[0].startswith(f"E156 {first + 1}:15 function `f{first}` nests more than "
                               f"{MAX_EXPANDED_DEPTH} levels deep"), found
    assert f"f{first} → f{first - 1} → f{first - 2} → … → f1 → f0" in found[0]


def test_a_wide_chain_is_refused_too() -> None:
    """Each function adds an `and` level as well as a call: deeper per function."""
    lines = ['def f0(x) = x == "deep@example.org"']
    lines += [f'def f{i}(x) = f{i - 1}(x) and x != "z{i}@example.org"'
              for i in range(1, 400)]
    text = "\n".join(lines) + "\n\n" + STAGE.format(condition="f399(sender)")
    found = errors_of(text)
    assert len(found) == 1 and found[0].startswith("E156"), found


def test_a_chain_at_the_limit_inside_64_levels_of_not_and_a_template_still_checks() -> None:
    """The worst the bounds allow: a function body 60 `not`s deep, a chain up to the
    limit, called inside a template's `{…}` 60 `not`s deep, inside 60 more in the rule."""
    body = "not " * 60 + '(x == "deep@example.org")'
    lines = [f"def f0(x) = {body}"]
    count = MAX_EXPANDED_DEPTH - 62
    lines += [f"def f{i}(x) = f{i - 1}(x)" for i in range(1, count + 1)]
    inner = "not " * 60 + f"f{count}(sender)"
    condition = "not " * 60 + f'("{{{inner}}}" == "true")'
    text = "\n".join(lines) + "\n\n" + STAGE.format(condition=condition)
    assert decision(text, "deep@example.org") == ("reject", "550 5.7.1 deep", "deep")
    assert decision(text, "x@example.org") == ("accept", None, "default")


def test_running_out_of_frames_anyway_is_E156_at_what_was_being_checked() -> None:
    """The backstop: with far fewer frames than Python's default, the same set is refused
    with positioned errors, not a RecursionError."""
    text = chain(MAX_EXPANDED_DEPTH - 2)
    saved = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack()) + 250)
    try:
        result = compile_text(text, "deep.policy")
    finally:
        sys.setrecursionlimit(saved)
    assert result.policy_set is None
    codes = {d.code for d in result.errors}
    assert codes == {"E156"}, [str(d) for d in result.errors]
    assert all("nests too deeply to check" in d.message for d in result.errors)
    # Definitions type their own bodies only (a call there takes the callee's definition
    # type): the rule's call is what expands the chain, so the rule is refused, positioned.
    first = result.errors[0]
    assert first.message.startswith("rule `deep`"), first.message
    assert first.span.line == MAX_EXPANDED_DEPTH + 1 and first.span.column > 1


# ---------------------------------------------------------------------------------------
# Nested and long expressions (siblings)


@pytest.mark.parametrize("depth", [1000, 5000])
def test_thousands_of_parentheses_check_decide_and_format(depth: int) -> None:
    condition = "(" * depth + 'sender == "deep@example.org"' + ")" * depth
    text = STAGE.format(condition=condition)
    assert decision(text, "deep@example.org")[0] == "reject"
    assert decision(text, "x@example.org")[0] == "accept"
    assert format_text(text, "deep.policy") == text
    messy = text.replace("when (", "when    (")
    assert format_text(messy, "deep.policy") == text


def test_a_thousand_nots_are_E013_where_the_limit_is_passed() -> None:
    text = STAGE.format(condition="not " * 1000 + 'sender == "a@example.org"')
    found = errors_of(text)
    assert found == [f"E013 3:{14 + 4 * 62} expression nested too deeply (more than 64 levels)"]


@pytest.mark.parametrize("op", ["and", "or"])
def test_three_thousand_operands_check_decide_and_format(op: str) -> None:
    compare = "!=" if op == "and" else "=="
    condition = f" {op} ".join(f'sender {compare} "a{i}@example.org"' for i in range(3000))
    text = STAGE.format(condition=condition)
    hit = "a2999@example.org"
    assert decision(text, hit)[0] == ("accept" if op == "and" else "reject")
    assert decision(text, "b@example.org")[0] == ("reject" if op == "and" else "accept")
    assert format_text(text, "deep.policy") == text


# ---------------------------------------------------------------------------------------
# The commands, as an operator runs them


def test_check_fmt_and_test_commands_on_a_long_chain(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "10-deep.policy").write_text(chain(1000))
    (policies / "10-deep.test.toml").write_text(
        '[[case]]\nname = "deep"\nrequest = { stage = "rcpt", envelope.from = '
        '"deep@example.org", envelope.to = ["a@example.org"] }\n'
        'expect = { action = "reject" }\n')
    for argv in (["check", str(policies)], ["test", str(policies)]):
        assert main(argv) == 1
        out, err = capsys.readouterr()
        err = out + err
        assert "10-deep.policy:150:15: error E156: function `f149`" in err, err
        assert "150 | def f149(x) = f148(x)" in err and "^~~~" in err
        assert "Traceback" not in err
    assert main(["fmt", str(policies)]) == 0  # fmt does not expand calls
    assert "1 file reformatted" in capsys.readouterr().err
    assert main(["fmt", "--check", str(policies)]) == 0
    assert "1 unchanged" in capsys.readouterr().err


def test_a_deep_policy_in_a_real_process_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "deep.policy"
    path.write_text(chain(5000))
    run = subprocess.run([sys.executable, "-m", "komm_policy", "check", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    printed = run.stdout + run.stderr
    assert f"{path}:150:15: error E156" in printed
    assert "Traceback" not in printed and "RecursionError" not in printed


def test_serve_refuses_to_start_and_a_reload_keeps_the_running_policies(tmp_path: Path
                                                                       ) -> None:
    deployment = Deployment(tmp_path)
    deep = deployment.policies / "99-deep.policy"
    deep.write_text(chain(1000))
    refusing = ServerProcess(deployment, "--no-watch")
    with pytest.raises(RuntimeError) as refused:
        refusing.start()
    assert refusing.stop() != 0
    assert "99-deep.policy:150:15: error E156" in str(refused.value)
    assert "Traceback" not in str(refused.value)
    deep.unlink()
    with ServerProcess(deployment, "--no-watch") as server:
        before = httpx.get(f"{server.url}/readyz").json()
        assert before["status"] == "ok"
        deep.write_text(chain(1000))
        server.signal(signal.SIGHUP)
        assert wait_for(lambda: httpx.get(f"{server.url}/readyz").json()["status"]
                        == "degraded")
        body = httpx.get(f"{server.url}/readyz").json()
        assert body["policy_version"] == before["policy_version"]
        assert "99-deep.policy:150:15: error E156" in body["diagnostic"]
        assert "Traceback" not in server.output()
        # a short chain loads (the shipped set has the stage's `default` already)
        deep.write_text(chain(20).replace("\n\n    default accept", ""))
        server.signal(signal.SIGHUP)
        assert wait_for(lambda: httpx.get(f"{server.url}/readyz").json()["status"] == "ok")
        assert httpx.get(f"{server.url}/readyz").json()["policy_version"] != \
            before["policy_version"]
