"""`python -m tests.spacetimedb_double --port 3000 [--spec FILE] [--owner-token T]`: run
the SpacetimeDB double in the foreground (Ctrl-C stops it).  Without `--spec` it serves the
databases of `samples.SPEC` (the captured samples' tables and a small directory)."""

from __future__ import annotations

import argparse
import json

import uvicorn

from .samples import SPEC
from .server import Double
from .state import State


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.spacetimedb_double")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--spec", help="JSON file declaring databases (see state.py)")
    parser.add_argument("--owner-token", help="token that may read private tables")
    args = parser.parse_args()
    spec = SPEC
    if args.spec:
        with open(args.spec, encoding="utf-8") as f:
            spec = json.load(f)
    state = State.from_spec(spec, args.owner_token)
    print(f"SpacetimeDB double on http://{args.host}:{args.port}; databases "
          f"{', '.join(state.databases)}; owner token:\n{state.owner_token}", flush=True)
    uvicorn.run(Double(state).app, host=args.host, port=args.port, log_level="warning",
                ws="websockets-sansio", lifespan="off")


if __name__ == "__main__":
    main()
