"""The grammar itself: LALR without conflicts, loadable from a checkout."""

from __future__ import annotations

from komm_policy.grammar import build_parser, grammar_text


def test_grammar_builds_in_strict_mode():
    # strict=True raises on shift/reduce conflicts and on regex collisions between terminals
    parser = build_parser(strict=True)
    assert parser.options.parser == "lalr"


def test_grammar_text_is_the_checkout_file():
    from .conftest import ROOT

    assert grammar_text() == (ROOT / "grammar" / "policy.lark").read_text(encoding="utf-8")


def test_grammar_loads_from_a_built_wheel(tmp_path):
    """Build the wheel, unpack it, and import komm_policy from there: the grammar must
    come from inside the package, with no source checkout next to it."""
    import subprocess
    import sys
    import zipfile

    from .conftest import ROOT

    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--quiet", "-w", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("komm_policy-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert "komm_policy/grammar/policy.lark" in archive.namelist()
        archive.extractall(tmp_path / "site")
    probe = (
        "import komm_policy, pathlib, sys\n"
        "from komm_policy.grammar import grammar_text\n"
        "from komm_policy.parser import parse\n"
        "assert pathlib.Path(komm_policy.__file__).is_relative_to(sys.argv[1])\n"
        "result = parse('stage connect { default accept }', 'x.policy')\n"
        "assert result.file is not None, result.diagnostics\n"
        "print(len(grammar_text()))\n"
    )
    run = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "site")],
                         capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(tmp_path / "site"), "PATH": ""},
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) == len((ROOT / "grammar" / "policy.lark").read_text("utf-8"))
