"""The 20-rule RCPT workload of the peer measurement (shared/reference/peerbench), as data
every engine shares: the rules, the directory content, the benchmark request and probes.

Rules, first match wins: 1 reject a blocked client IP; 2 reject a HELO without a dot;
3 reject a sender not matching ^[^@]+@[^@]+\\.[a-z]{2,}$; 4-17 reject 14 spam domains;
18 reject an unknown list; 19 reject a sender not subscribed to the list's category;
20 accept.  The benchmark request passes every check, so all 19 conditions run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from komm_policy.directory.memory import InMemoryDirectory
from komm_policy.ipset import IP, IPSet, parse_entry
from komm_policy.wire import Request, decode_request

SENDER_PATTERN = r"[^@]+@[^@]+\.[a-z]{2,}"  # matched against the whole address
SPAM_SUFFIXES = tuple(f"@spamdomain{k}.test" for k in range(1, 15))

BENCH_REQUEST = {
    "client_ip": "203.0.113.7",
    "helo": "mail.example.org",
    "sender": "alice@example.org",
    "recipient": "news@solawi.example",
}

# (label, changes to the benchmark request, expected answer); the first two are the gate.
PROBES = (
    ("benchmark request -> accept", {}, "accept"),
    ("unsubscribed sender -> reject (rule 19)", {"sender": "bob@example.org"}, "reject"),
    ("blocked client IP (rule 1)", {"client_ip": "198.18.1.42"}, "reject"),
    ("HELO without a dot (rule 2)", {"helo": "localhost"}, "reject"),
    ("subscribed sender, 1-letter TLD (rule 3)", {"sender": "carol@example.c"}, "reject"),
    ("subscribed spam-domain sender (rule 12)", {"sender": "eve@spamdomain9.test"}, "reject"),
    ("unknown recipient (rule 18)", {"recipient": "nobody@solawi.example"}, "reject"),
)
GATE = 2

POLICY = "\n".join([
    "# The peerbench 20-rule RCPT workload in the komm-policy language.",
    "stage rcpt {",
    "    rule blocked_ip: when ip_blocked(client.ip) reject",
    '    rule helo_without_dot: when not (client.helo contains ".") reject',
    "    rule malformed_sender: when not (sender matches /\\A[^@]+@[^@]+\\.[a-z]{2,}\\Z/) "
    "reject",
    *[f'    rule spam_domain_{k}: when sender ends_with "{s}" reject'
      for k, s in enumerate(SPAM_SUFFIXES, start=1)],
    "    rule unknown_list: when category(rcpt) == none reject",
    "    rule not_subscribed: when not subscribed(sender, category(rcpt)) reject",
    "    default accept",
    "}",
    "",
])

FUNCTIONS_POLICY = "\n".join([
    "# The same workload with its lookups wrapped in policy-defined functions.",
    "def blocked(ip) = ip_blocked(ip)",
    "def list_of(address) = category(address)",
    "def may_post(address, list) = subscribed(address, list_of(list))",
    *POLICY.splitlines()[1:],
]).replace("when ip_blocked(client.ip)", "when blocked(client.ip)").replace(
    "when category(rcpt) == none", "when list_of(rcpt) == none").replace(
    "when not subscribed(sender, category(rcpt))", "when not may_post(sender, rcpt)")


@dataclass(frozen=True)
class Data:
    blocked_ips: tuple[str, ...]                 # 1,000 addresses
    categories: dict[str, str]                   # 50 list addresses -> category key
    subscriptions: tuple[tuple[str, str], ...]   # 10,000 (sender, category key) pairs


def make_data(subscriptions: int = 10_000) -> Data:
    """The peerbench data shape: 1,000 blocked IPs, 50 list addresses, `subscriptions`
    (sender, category) pairs.  Every list is its own category here, as in the origin's
    schema.  The keys the benchmark request hits sit in the middle of each collection."""
    blocked = tuple(f"198.18.{i // 256}.{i % 256}" for i in range(1000))
    addresses = [f"list{i:02d}@solawi.example" for i in range(49)]
    addresses.insert(25, "news@solawi.example")
    categories = {address: f"category-{i:02d}" for i, address in enumerate(addresses)}
    news = categories["news@solawi.example"]
    traps = [("carol@example.c", news), ("eve@spamdomain9.test", news)]
    keys = list(categories.values())
    members = [(f"{'aa' if i % 2 else 'zz'}member{i:05d}@example.net", keys[i % len(keys)])
               for i in range(subscriptions - 1 - len(traps))]
    half = len(members) // 2
    pairs = (*members[:half], ("alice@example.org", news), *members[half:], *traps)
    return Data(blocked, categories, tuple(pairs))


def directory_rows(data: Data) -> dict[str, list[dict[str, object]]]:
    """The same data in the origin's tables (policies/schema.toml): one account per
    subscriber."""
    category_id = {key: i for i, key in enumerate(data.categories.values(), start=1)}
    accounts: dict[str, dict[str, object]] = {}
    subscriptions = []
    for number, (sender, key) in enumerate(data.subscriptions, start=1):
        account = accounts.setdefault(sender, {
            "id": len(accounts) + 1, "identity": "", "name": sender, "email": sender,
            "is_active": True, "last_synced": None})
        subscriptions.append({"id": number, "subscriber_account_id": account["id"],
                              "subscriber_email": sender, "category_id": category_id[key],
                              "subscribed_at": None, "active": True})
    return {
        "blocked_ips": [{"ip": ip, "reason": "", "blocked_at": 0, "active": True}
                        for ip in data.blocked_ips],
        "message_categories": [{"id": category_id[key], "name": key, "email_address": address,
                                "description": "", "active": True}
                               for address, key in data.categories.items()],
        "account": list(accounts.values()),
        "admin_identities": [],
        "subscriptions": subscriptions,
    }


class ReferenceIndex:
    """What hand-written Python would keep for the workload: a set of blocked networks,
    list address -> category id, and (sender, category id) subscription pairs."""

    def __init__(self, data: Data) -> None:
        self._blocked = IPSet([parse_entry(ip) for ip in data.blocked_ips])
        ids = {key: i for i, key in enumerate(data.categories.values(), start=1)}
        self._categories = {address.lower(): ids[key]
                            for address, key in data.categories.items()}
        self._subscribed = {(sender.lower(), ids[key]) for sender, key in data.subscriptions}

    def ip_blocked(self, ip: IP) -> bool:
        return ip in self._blocked

    def category(self, address: str) -> int | None:
        return self._categories.get(address)

    def subscribed(self, address: str, category: int) -> bool:
        return (address, category) in self._subscribed


def probe_fields(changes: dict[str, str]) -> dict[str, str]:
    return {**BENCH_REQUEST, **changes}


def stalwart_request(fields: dict[str, str]) -> Request:
    """The fields as the RCPT hook request Stalwart sends (the list address is the third
    recipient, judged now)."""
    body = {
        "context": {
            "stage": "rcpt",
            "client": {"ip": fields["client_ip"], "port": 52811, "ptr": None,
                       "helo": fields["helo"], "activeConnections": 1},
            "server": {"name": "Stalwart v0.16.18", "port": 25, "ip": "203.0.113.25"},
            "protocol": {"version": 1},
        },
        "envelope": {
            "from": {"address": fields["sender"]},
            "to": [{"address": "list01@solawi.example"}, {"address": "list02@solawi.example"},
                   {"address": fields["recipient"]}],
        },
    }
    return decode_request(json.dumps(body))


def memory_directory(data: Data) -> InMemoryDirectory:
    """An in-memory directory holding the workload's data (indexed by `require`)."""
    return InMemoryDirectory(directory_rows(data))
