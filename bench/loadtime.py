"""Load time: parse + check + compile policy sets of growing size."""

from __future__ import annotations

import gc
import statistics
import time
from pathlib import Path
from typing import Any

from komm_policy.checker import check
from komm_policy.compiler import compile_program
from komm_policy.parser import parse
from komm_policy.policyset import no_gc_pauses

_STAGES = ("connect", "mail", "rcpt", "data")
DIRECTORY = Path(__file__).resolve().parent.parent / "policies" / "00-directory.policy"
"""The shipped directory functions (`subscribed`, `category`) the generated rules call."""


def _rule(i: int) -> tuple[str, str]:
    """A realistic rule of one of five shapes, and the stage it belongs to."""
    shape = i % 5
    if shape == 0:
        return "mail", (f'    rule spam_domain_{i}: when sender ends_with "@spam{i}.example"\n'
                        f'        reject 550 5.7.1 "Domain {i} is not welcome"\n')
    if shape == 1:
        return "connect", (f"    rule network_{i}: when client.ip in "
                           f"[10.{i // 250 % 250}.{i % 250}.0/24, 2001:db8:{i:x}::/48]\n"
                           "        reject 550 5.7.1 \"Network blocked: {client.ip}\"\n")
    if shape == 2:
        return "data", (f"    rule subject_{i}: when subject matches /(?i)\\bword{i}\\b/\n"
                        f'        quarantine "subject word {i}"\n')
    if shape == 3:
        return "rcpt", (f'    rule list_{i}: when rcpt == "list{i}@solawi.example" and\n'
                        "            not subscribed(sender, category(rcpt))\n"
                        "        reject 550 5.7.1 \"{sender} may not post to {rcpt}\"\n")
    return "data", (f'    rule tag_{i}: when header("X-Test-{i}") == "yes"\n'
                    f'        add_header "X-Seen-{i}" "{{queue.id}}"\n        continue\n')


def policy_text(rules: int) -> str:
    by_stage: dict[str, list[str]] = {s: [] for s in _STAGES}
    for i in range(rules):
        stage, text = _rule(i)
        by_stage[stage].append(text)
    parts = ['settings { quarantine_to = "quarantine@solawi.example" }\n']
    for stage, texts in by_stage.items():
        parts.append(f"stage {stage} {{\n{''.join(texts)}    default accept\n}}\n")
    return "".join(parts)


def load_once(text: str) -> dict[str, float]:
    """The three phases of `policyset.compile_sources`, timed, under the same conditions
    (cyclic GC paused while loading)."""
    with no_gc_pauses():
        t0 = time.perf_counter()
        directory = parse(DIRECTORY.read_text(), DIRECTORY.name)
        parsed = parse(text, "generated.policy")
        t1 = time.perf_counter()
        assert parsed.file is not None and directory.file is not None, parsed.diagnostics[:3]
        analysis = check([directory.file, parsed.file])
        t2 = time.perf_counter()
        assert not analysis.has_errors, analysis.diagnostics[:3]
        compile_program(analysis)
        t3 = time.perf_counter()
    gc.collect()  # what the pause deferred, outside the timing of the next size
    return {"parse_s": t1 - t0, "check_s": t2 - t1, "compile_s": t3 - t2, "total_s": t3 - t0}


def run(*, sizes: tuple[int, ...], repeats: int, log: Any = print) -> dict[str, Any]:
    rows = []
    for size in sizes:
        text = policy_text(size)
        samples = [load_once(text) for _ in range(repeats)]
        row: dict[str, Any] = {"rules": size, "lines": text.count("\n")}
        for key in ("parse_s", "check_s", "compile_s", "total_s"):
            row[key] = statistics.median(s[key] for s in samples)
        row["us_per_rule"] = row["total_s"] / size * 1e6
        rows.append(row)
        log(f"  {size:>5} rules: {row['total_s'] * 1000:8.1f} ms "
            f"({row['us_per_rule']:.0f} µs/rule)")
    return {"rows": rows}
