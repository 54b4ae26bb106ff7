"""Core decision: one decision of the 20-rule RCPT workload, every engine side by side."""

from __future__ import annotations

from typing import Any

from .engines import PEERS, Engine, hand_written, komm_engines
from .measure import interleaved
from .workload import GATE, PROBES, ReferenceIndex, make_data, probe_fields


def check_probes(engine: Engine) -> bool:
    """Run every probe; True when the engine passes the correctness gate."""
    gate_ok = True
    for position, (label, changes, expected) in enumerate(PROBES):
        got = engine.decide(engine.prepare(probe_fields(changes)))
        if got != expected:
            engine.probes_failed.append(label)
            if position < GATE:
                gate_ok = False
    return gate_ok


def run(*, rounds: int, min_seconds: float, chunk_seconds: float,
        log: Any = print) -> dict[str, Any]:
    data = make_data()
    engines: list[Engine] = [hand_written(ReferenceIndex(data)), *komm_engines(data)]
    skipped: dict[str, str] = {}
    for name, build in PEERS.items():
        try:
            engines.append(build(data))
        except ImportError as exc:
            skipped[name] = f"not installed ({exc.name})"
    gated = []
    for engine in engines:
        if check_probes(engine):
            gated.append(engine)
        else:
            skipped[engine.name] = f"failed the correctness gate: {engine.probes_failed}"
    for name, why in skipped.items():
        log(f"  skipped {name}: {why}")
    bench_input = {e.name: e.prepare(probe_fields({})) for e in gated}
    series = interleaved([(e.name, e.decide, bench_input[e.name]) for e in gated],
                         rounds=rounds, min_seconds=min_seconds, chunk_seconds=chunk_seconds)
    for engine in gated:  # the answers must not have changed during timing
        assert check_probes(Engine(engine.name, engine.prepare, engine.decide))
    reference = next(s for s, e in zip(series, gated, strict=True) if e.reference)
    rows = []
    for engine, s in zip(gated, series, strict=True):
        row = s.as_dict()
        row.update(ratio=s.median / reference.median, note=engine.note,
                   probes_failed=engine.probes_failed)
        rows.append(row)
    return {"reference": reference.name, "rows": rows, "skipped": skipped}
