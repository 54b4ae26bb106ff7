"""A huge SpacetimeDB transaction against a real `komm-policy serve` (not part of
`bench.run`: minutes, and it measures one process's peak, not a rate).

    python -m bench.spacetimedb_big [--rows 200000] [--initial 0] [--rounds 1]
                                    [--compare DIR]

`--initial 200000` puts the transaction on a table of that many rows: it replaces at
least a quarter of it, so the table is rebuilt and the replaced one freed (a slice at a
time, `spacetimedb_apply.release`).  `--resubscribe` then drops the subscription and
measures the reconnection's snapshot of every row the same way (served from the previous
snapshot meanwhile).
`--compare DIR` runs the service from another source tree (PYTHONPATH=DIR, e.g. an
exported earlier commit) interleaved with this one, round by round (A B A B …).  Per run:
apply time (from posting the transaction to the double until /metrics shows its rows),
the service's RSS before and at peak (VmHWM, reset before the transaction), and the
answer times of connect-stage hook requests sent every 2 ms meanwhile (harness:
`tests/bigupdate.py`).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from tests.bigupdate import Measured, measure


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.spacetimedb_big")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--initial", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--compare", help="another source tree, run interleaved")
    parser.add_argument("--resubscribe", action="store_true",
                        help="then drop the subscription: measure the new snapshot too")
    args = parser.parse_args()
    variants = [("this tree", {})]
    if args.compare:
        variants.append((args.compare, {"PYTHONPATH": str(Path(args.compare).resolve())}))
    runs: dict[str, list[Measured]] = {name: [] for name, _ in variants}
    with tempfile.TemporaryDirectory(prefix="komm-big-") as tmp:
        for r in range(args.rounds):
            for i, (name, env) in enumerate(variants):
                again = Measured(0, 0) if args.resubscribe else None
                result = measure(Path(tmp) / f"{r}-{i}", args.initial, args.rows, env=env,
                                 resubscribe=again)
                runs[name].append(result)
                print(f"{name} #{r + 1}: {result.summary()}", flush=True)
                if again is not None:
                    print(f"{name} #{r + 1}: {again.summary()}", flush=True)
    for name, results in runs.items():
        def stat(values: list[float]) -> str:
            return f"min {min(values):.1f}, median {statistics.median(values):.1f}"
        print(f"{name}: peak RSS growth MB {stat([m.peak_growth / 1e6 for m in results])}; "
              f"max answer ms {stat([max(m.latencies_ms) for m in results])}; p99 ms "
              f"{stat([m.latency(0.99) for m in results])}; apply s "
              f"{stat([m.apply_s for m in results])}")


if __name__ == "__main__":
    main()
