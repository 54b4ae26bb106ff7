"""`komm-policy eval REQUEST.json [--explain]`: decide one hook request offline.

Shows the decision, the exact JSON Stalwart would receive and, with `--explain`, every
rule evaluated with its outcome and every lookup with its arguments, result and time.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import msgspec

from ..config import ConfigError, load_config
from ..decision import Decision
from ..decisionlog import encode_record, make_record
from ..hook import response as wire_response
from ..hook.service import close_directory, open_directory, require_tables
from ..lookups import describe_args
from ..policyset import load_path
from ..runtime import decide
from ..text import shown
from ..wire import RequestError, decode_request
from . import os_error_text, read_input


def register(sub: Any) -> None:
    parser = sub.add_parser("eval", help="decide one hook request and explain it",
                            description=__doc__.splitlines()[0])
    parser.add_argument("request", help="a hook request as JSON ('-' for stdin)")
    parser.add_argument("--config", metavar="FILE",
                        help="komm.toml (or KOMM_CONFIG): the policies and directory `serve` "
                             "uses")
    parser.add_argument("--policies", metavar="PATH",
                        help="policy directory or file (default: as `serve`, from the "
                             "configuration, else policies)")
    parser.add_argument("--directory", metavar="URL",
                        help="sqlite:PATH, memory:demo or memory:empty (default: as `serve`, "
                             "from the configuration, else sqlite:var/komm.sqlite3)")
    parser.add_argument("--explain", action="store_true", help="show rules and lookups")
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="output format (default: text)")
    parser.set_defaults(run=run)


_CONFIG_VARIABLES = ("KOMM_CONFIG", "KOMM_POLICIES", "KOMM_DIRECTORY",
                     "KOMM_REFRESH_INTERVAL", "KOMM_MAX_STALENESS")


def run(args: argparse.Namespace) -> int:
    env = {k: v for k, v in os.environ.items() if k in _CONFIG_VARIABLES}
    try:  # the same settings `serve` reads, so offline and live answers agree
        config = load_config(args.config, env=env, only=("directory",), overrides={
            "directory": args.directory, "policies": args.policies})
    except ConfigError as exc:
        print(f"komm-policy eval: {exc}\n(eval decides with the directory `serve` uses; "
              "`--directory memory:demo` uses the demo data)", file=sys.stderr)
        return 2
    try:
        body = read_input(args.request)
        result = load_path(config.policies)
    except OSError as exc:
        print(f"komm-policy eval: {os_error_text(exc, args.request)}", file=sys.stderr)
        return 2
    if result.policy_set is None:
        print(result.render(result.errors), file=sys.stderr)
        return 1
    try:
        request = decode_request(body)
    except RequestError as exc:
        print(f"komm-policy eval: {args.request}: {exc.message} at {exc.path}",
              file=sys.stderr)
        return 1
    try:
        directory = open_directory(config)
        require_tables(directory, result.policy_set)
    except Exception as exc:
        print(f"komm-policy eval: directory {config.directory}: {exc}", file=sys.stderr)
        return 2
    decision = decide(result.policy_set, request, directory, trace=args.explain)
    close_directory(directory)
    wire = wire_response.encode(decision)
    if args.format == "json":
        record = msgspec.json.decode(encode_record(make_record(request, decision, 0.0)))
        out = {"decision": record, "response": msgspec.json.decode(wire),
               "directory": config.directory}
        if args.explain and decision.trace is not None:
            out["trace"] = [{"rule": s.rule.name, "line": s.rule.line, "outcome": s.outcome,
                             "error": s.error} for s in decision.trace]
        print(msgspec.json.format(msgspec.json.encode(out)).decode())
        return 0
    print(f"stage:    {decision.stage}")
    print(f"action:   {decision.action}" + ("  (fallback)" if decision.fallback else ""))
    if decision.reply:
        print(f"reply:    {decision.reply}")
    if decision.rule:
        print(f"rule:     {decision.rule}")
    if decision.cause:
        print(f"cause:    {decision.cause}")
    for mod in decision.modifications:
        print(f"modify:   {msgspec.json.encode(mod).decode()}")
    for hit in decision.dry_run:
        print(f"dry run:  {hit.rule} would {hit.action}" + (f" ({hit.reply})" if hit.reply
                                                            else ""))
    for line in decision.logs:
        print(f"log:      {shown(line)}")
    for error in decision.errors:
        print(f"error:    {shown(error)}")
    print(f"response: {wire.decode()}")
    print(f"directory: {config.directory}")
    if args.explain:
        _explain(decision)
    return 0


def _explain(decision: Decision) -> None:
    """The rules evaluated and the lookups done, in aligned columns; empty sections are
    left out."""
    steps = decision.trace or ()
    if steps:
        print("rules:")
        places = [f"{s.rule.file}:{s.rule.line}" for s in steps]
        place_width = max(map(len, places))
        name_width = max(len(s.rule.name) for s in steps)
        for place, step in zip(places, steps, strict=True):
            extra = f"  {shown(step.error)}" if step.error else ""
            print(f"  {place:<{place_width}}  {step.rule.name:<{name_width}}  "
                  f"{step.outcome}{extra}".rstrip())
    if decision.lookups:
        print("lookups:")
        for lookup in decision.lookups:
            args_text = describe_args(lookup.args)
            result = lookup.result
            outcome = lookup.error or (describe_args((result,))
                                       if result is None or isinstance(result, bool)
                                       else repr(result))
            timing = f"  {lookup.duration_ms:.3f} ms" if lookup.duration_ms is not None else ""
            print(f"  {lookup.function}({shown(args_text)}) -> {shown(outcome)}{timing}")
