"""The engines compared on the 20-rule workload.  Each is prepared once (policy compiled,
data loaded into the engine's own structures); `decide(input)` is what a decision costs:
hand the request to the engine, evaluate, read the answer."""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from komm_policy.directory.memory import InMemoryDirectory
from komm_policy.directory.schema import load_schema
from komm_policy.directory.snapshot import Needs
from komm_policy.directory.sqlite import SqliteDirectory, create_database
from komm_policy.policyset import PolicySet, Source, compile_sources
from komm_policy.runtime import decide

from .workload import (
    FUNCTIONS_POLICY,
    POLICY,
    SENDER_PATTERN,
    SPAM_SUFFIXES,
    Data,
    directory_rows,
    stalwart_request,
)


@dataclass
class Engine:
    name: str
    prepare: Callable[[dict[str, str]], Any]
    """Turns the benchmark fields into the engine's input (not timed)."""
    decide: Callable[[Any], str]
    note: str = ""
    reference: bool = False
    probes_failed: list[str] = field(default_factory=list)


ROOT = Path(__file__).resolve().parent.parent
DIRECTORY_FILE = ROOT / "policies" / "00-directory.policy"
SCHEMA = load_schema(ROOT / "policies" / "schema.toml")


def compile_workload(text: str = POLICY) -> PolicySet:
    """The workload after the shipped directory file (its helpers are functions over the
    origin's tables), checked against the shipped schema file."""
    result = compile_sources([Source(str(DIRECTORY_FILE),
                                     DIRECTORY_FILE.read_text(encoding="utf-8")),
                              Source("bench/workload.policy", text)], schema=SCHEMA)
    if result.policy_set is None:
        raise RuntimeError("\n".join(str(d) for d in result.diagnostics))
    return result.policy_set


def komm_engine(name: str, policy_set: PolicySet, directory: Any, *, trace: bool = False,
                note: str = "") -> Engine:
    def run(request: Any) -> str:
        return decide(policy_set, request, directory, trace=trace).action
    return Engine(name, stalwart_request, run, note)


def hand_written(directory: Any) -> Engine:
    """The same rules written out in Python against the same request and directory."""
    sender_ok = re.compile(SENDER_PATTERN).fullmatch

    def run(request: Any) -> str:
        client = request.context.client
        if directory.ip_blocked(client.parsed_ip):
            return "reject"
        helo = client.helo
        if helo is None or "." not in helo:
            return "reject"
        envelope = request.envelope
        sender = envelope.from_.address.lower()
        if sender_ok(sender) is None:
            return "reject"
        if sender.endswith("@spamdomain1.test"):
            return "reject"
        if sender.endswith("@spamdomain2.test"):
            return "reject"
        if sender.endswith("@spamdomain3.test"):
            return "reject"
        if sender.endswith("@spamdomain4.test"):
            return "reject"
        if sender.endswith("@spamdomain5.test"):
            return "reject"
        if sender.endswith("@spamdomain6.test"):
            return "reject"
        if sender.endswith("@spamdomain7.test"):
            return "reject"
        if sender.endswith("@spamdomain8.test"):
            return "reject"
        if sender.endswith("@spamdomain9.test"):
            return "reject"
        if sender.endswith("@spamdomain10.test"):
            return "reject"
        if sender.endswith("@spamdomain11.test"):
            return "reject"
        if sender.endswith("@spamdomain12.test"):
            return "reject"
        if sender.endswith("@spamdomain13.test"):
            return "reject"
        if sender.endswith("@spamdomain14.test"):
            return "reject"
        category = directory.category(envelope.to[-1].address.lower())
        if category is None:
            return "reject"
        if not directory.subscribed(sender, category):
            return "reject"
        return "accept"

    assert len(SPAM_SUFFIXES) == 14
    return Engine("hand-written Python (same request, its own dictionaries of the data)",
                  stalwart_request, run, "straight-line ifs over the decoded request",
                  reference=True)


def sqlite_file(rows: dict[str, Any], folder: Path | None = None) -> Path:
    folder = folder or Path(tempfile.mkdtemp(prefix="komm-bench-"))
    path = folder / "bench.sqlite3"
    create_database(path, rows)
    return path


def komm_engines(data: Data) -> list[Engine]:
    policy_set = compile_workload()
    functions_set = compile_workload(FUNCTIONS_POLICY)
    rows = directory_rows(data)
    memory = InMemoryDirectory(rows)
    memory.require(SCHEMA, Needs(policy_set.needs.indexes | functions_set.needs.indexes))
    path = sqlite_file(rows)
    replica = SqliteDirectory(path, start=False)
    replica.require(SCHEMA, policy_set.needs)
    return [
        komm_engine("komm-policy (in-memory directory)", policy_set, memory,
                    note="compiled closures; fused spam rules; memoised lookups"),
        komm_engine("komm-policy, lookups in policy functions (in-memory)",
                    functions_set, memory,
                    note="the same rules calling `def` functions that wrap the lookups"),
        komm_engine("komm-policy, trace=True", policy_set, memory,
                    note="records every rule and timed lookup"),
        komm_engine("komm-policy (SQLite store, replica)", policy_set, replica,
                    note="the default backend: lookups read the in-memory replica"),
    ]


# -- peer engines --------------------------------------------------------------------------

def _cel_source() -> str:
    conditions = [
        "client_ip in blocked_ips",
        '!helo.contains(".")',
        f"!sender.matches({json.dumps('^' + SENDER_PATTERN + '$')})",
        *[f"sender.endsWith({json.dumps(s)})" for s in SPAM_SUFFIXES],
        "!(recipient in categories)",
        '!((sender + "|" + categories[recipient]) in subscriptions)',
    ]
    return " : ".join(f'{c} ? "reject"' for c in conditions) + ' : "accept"'


def _cel_maps(data: Data) -> dict[str, Any]:
    return {
        "blocked_ips": dict.fromkeys(data.blocked_ips, True),
        "categories": dict(data.categories),
        "subscriptions": {f"{s}|{c}": True for s, c in data.subscriptions},
    }


def cel_python(data: Data) -> Engine:
    import celpy
    import celpy.celparser

    celpy.celparser.CELParser.CEL_PARSER = None  # the compiled runner needs its own tree type
    environment = celpy.Environment(runner_class=celpy.CompiledRunner)
    program = environment.program(environment.compile(_cel_source()))
    static = {name: celpy.json_to_cel(value) for name, value in _cel_maps(data).items()}
    string = celpy.celtypes.StringType

    def run(req: dict[str, str]) -> str:
        activation = dict(static)
        for key in ("client_ip", "helo", "sender", "recipient"):
            activation[key] = string(req[key])
        return str(program.evaluate(activation))
    return Engine("cel-python 0.5 (CompiledRunner)", dict, run,
                  "CEL ternary chain; sets as maps; its `in` scans maps linearly")


def cel_rust(data: Data) -> Engine:
    import cel

    program = cel.compile(_cel_source())
    context = cel.Context(variables=_cel_maps(data))
    current: dict[str, str] = {}
    context.set_variable_resolver(current.get)

    def run(req: dict[str, str]) -> str:
        current.update(req)
        return program.execute(context)
    return Engine("common-expression-language (cel-rust, Context + resolver)", dict, run,
                  "CEL ternary chain; big maps converted once; request via resolver")


def cedar(data: Data) -> Engine:
    import cedarpy

    like_sender = ('context.sender like "*@*.*" && !(context.sender like "*@*@*") && '
                   '!(context.sender like "@*") && !(context.sender like "*.")')
    conditions = [
        'when { Config::"smtp".blocked_ips.contains(context.client_ip) }',
        'unless { context.helo like "*.*" }',
        f"unless {{ {like_sender} }}",
        *[f'when {{ context.sender like "*{s}" }}' for s in SPAM_SUFFIXES],
        "unless { resource has category }",
        'when { resource has category && !Config::"smtp".subscriptions.contains('
        "{sender: context.sender, category: resource.category}) }",
    ]
    policies = "\n".join(f'@id("r{i}")\nforbid (principal, action, resource)\n  {c};'
                         for i, c in enumerate(conditions, start=1))
    policies += '\n@id("accept")\npermit (principal, action, resource);\n'
    entities = [{"uid": {"type": "Config", "id": "smtp"}, "parents": [], "attrs": {
        "blocked_ips": list(data.blocked_ips),
        "subscriptions": [{"sender": s, "category": c} for s, c in data.subscriptions]}}]
    entities += [{"uid": {"type": "MailingList", "id": address}, "parents": [],
                  "attrs": {"category": name}} for address, name in data.categories.items()]
    policy_set = cedarpy.PolicySet.from_str(policies)
    entity_set = cedarpy.Entities.from_json_str(json.dumps(entities))

    def prepare(fields: dict[str, str]) -> dict[str, Any]:
        return {"principal": {"type": "Sender", "id": fields["sender"]},
                "action": {"type": "Action", "id": "rcpt"},
                "resource": {"type": "MailingList", "id": fields["recipient"]},
                "context": dict(fields)}

    def run(request: dict[str, Any]) -> str:
        return "accept" if cedarpy.is_authorized(request, policy_set, entity_set).allowed \
            else "reject"
    return Engine("cedarpy (Cedar, pre-parsed policies and entities)", prepare, run,
                  "forbid per rule + permit; rule 3 approximated with `like` (no regex)")


PEERS: dict[str, Callable[[Data], Engine]] = {
    "cel-python": cel_python,
    "common-expression-language": cel_rust,
    "cedarpy": cedar,
}
