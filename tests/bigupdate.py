"""A huge SpacetimeDB transaction against a real `komm-policy serve` process, measured.

The harness of `test_spacetimedb_big_update.py` (scaled) and of `bench/spacetimedb_big.py`
(200,000 rows).  The SpacetimeDB double runs as its own process, so encoding and sending a
huge message does not compete with the probe for this process's interpreter lock; the
probe posts a connect-stage hook request every `PROBE_GAP_S` seconds while the
transaction is applied and times each answer.  Peak RSS is the service's `VmHWM`, reset
just before the transaction (`/proc/PID/clear_refs` 5) so only the apply's peak counts.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .serverproc import Deployment, ServerProcess, free_port
from .spacetimedb_double.samples import BLOCKED_AT, directory_spec

CONNECT = json.dumps({"context": {"stage": "connect",
                                  "client": {"ip": "192.0.2.77", "helo": "mx.example"}}})
HEADERS = {"content-type": "application/json"}
PROBE_GAP_S = 0.002
OWNER_TOKEN = "big-update-owner-token"
DEMO_BLOCKED = 4
"""Rows of `blocked_ips` in the double's demo directory (`directory_spec()`)."""


def blocked_ip(i: int) -> str:
    """The i-th address of 10.0.0.0/8 (distinct for i < 2²⁴)."""
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def blocked_rows(start: int, count: int) -> list[list[object]]:
    return [[blocked_ip(i), "bulk", BLOCKED_AT, True] for i in range(start, start + count)]


def proc_status(pid: int, key: str) -> int:
    """A `VmRSS`/`VmHWM` line of /proc/PID/status, in bytes."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


@dataclass
class Measured:
    initial_rows: int
    tx_rows: int
    ready_s: float = 0.0
    """From starting the service to /readyz 200 (the initial subscription loaded)."""
    apply_s: float = 0.0
    """From posting the transaction to the double until /metrics shows its rows."""
    rss_before: int = 0
    rss_peak: int = 0
    rss_after: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    """Answer times of the probe requests sent during the apply."""
    row_counts_seen: set[int] = field(default_factory=set)
    """`komm_directory_rows{table="blocked_ips"}` as /metrics showed it during the apply."""
    actions: set[str] = field(default_factory=set)
    """What the probe requests were answered (`accept`; `reject 451` is the fallback of a
    directory that is unavailable)."""
    max_age_s: float = 0.0
    """The largest `komm_directory_snapshot_age_seconds` /metrics showed during the apply
    (the time since the last message or pong from SpacetimeDB)."""

    @property
    def peak_growth(self) -> int:
        return self.rss_peak - self.rss_before

    def latency(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))]

    def summary(self) -> str:
        what = (f"{self.tx_rows:,}-row transaction on {self.initial_rows:,} rows"
                if self.tx_rows else f"resubscription to {self.initial_rows:,} rows")
        return (f"{what}: applied in {self.apply_s:.2f} s; RSS "
                f"{self.rss_before / 1e6:.0f} MB -> peak {self.rss_peak / 1e6:.0f} MB "
                f"(+{self.peak_growth / 1e6:.0f}), after "
                f"{self.rss_after / 1e6:.0f} MB; {len(self.latencies_ms)} answers during "
                f"it: max {max(self.latencies_ms):.1f} ms, p99 {self.latency(0.99):.1f} ms, "
                f"p50 {statistics.median(self.latencies_ms):.1f} ms; replica age up to "
                f"{self.max_age_s:.2f} s; answers {sorted(self.actions)}")


def _metrics(client: httpx.Client, url: str) -> tuple[int | None, float]:
    """(rows of blocked_ips, the replica's age in seconds) as /metrics shows them."""
    count, age = None, 0.0
    for line in client.get(f"{url}/metrics").text.splitlines():
        if line.startswith('komm_directory_rows{table="blocked_ips"}'):
            count = int(float(line.split()[-1]))
        elif line.startswith("komm_directory_snapshot_age_seconds "):
            age = float(line.split()[-1])
    return count, age


def measure(root: Path, initial_rows: int, tx_rows: int, timeout: float = 300.0,
            max_staleness: float = 3.0, env: dict[str, str] | None = None,
            resubscribe: Measured | None = None) -> Measured:
    """Start the double (holding `initial_rows` extra blocked addresses) and a service on
    it (`max_staleness` seconds: it pings SpacetimeDB every third of that), then commit
    one transaction inserting `tx_rows` more while probing; `env`: extra environment of
    the service (e.g. PYTHONPATH of another tree, for comparisons).  `resubscribe`: then
    drop the subscription and measure into it the reconnection's new `InitialSubscription`
    of every row, from the drop until the service logs its recovery."""
    result = Measured(initial_rows, tx_rows)
    spec = {"databases": {"komm": directory_spec()}}
    spec["databases"]["komm"]["tables"]["blocked_ips"]["rows"] += blocked_rows(0, initial_rows)
    root.mkdir(parents=True, exist_ok=True)
    (root / "spec.json").write_text(json.dumps(spec))
    (root / "token").write_text(OWNER_TOKEN + "\n")
    port = free_port()
    double = subprocess.Popen(
        [sys.executable, "-m", "tests.spacetimedb_double", "--port", str(port), "--spec",
         str(root / "spec.json"), "--owner-token", OWNER_TOKEN],
        stdout=subprocess.DEVNULL, cwd=Path(__file__).resolve().parent.parent)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait(lambda: _answers(f"{base}/v1/ping"), 20, "the double did not start")
        (root / "service").mkdir(exist_ok=True)
        started = time.monotonic()
        service = ServerProcess(Deployment(root / "service"), "--directory",
                                f"spacetimedb://127.0.0.1:{port}/komm",
                                KOMM_SPACETIMEDB_TOKEN_FILE=str(root / "token"),
                                KOMM_MAX_STALENESS=str(max_staleness), **(env or {}))
        with service, httpx.Client(timeout=30) as client:
            _wait(lambda: client.get(f"{service.url}/readyz").status_code == 200, timeout,
                  "the service did not load the initial subscription")
            result.ready_s = time.monotonic() - started
            _probe_and_apply(result, client, service, base, timeout)
            if resubscribe is not None:
                resubscribe.initial_rows = initial_rows + tx_rows
                resubscribe.tx_rows = 0
                _probe_resubscribe(resubscribe, client, service, base, timeout)
    finally:
        double.terminate()
        double.wait(10)
    return result


def _probe_and_apply(result: Measured, client: httpx.Client, service: ServerProcess,
                     base: str, timeout: float) -> None:
    body = json.dumps({"table": "blocked_ips",
                       "inserts": blocked_rows(result.initial_rows, result.tx_rows)}).encode()
    for _ in range(20):  # warm the path the probe takes
        client.post(f"{service.url}/mta-hook", content=CONNECT, headers=HEADERS)
    before = result.initial_rows + DEMO_BLOCKED
    assert _metrics(client, service.url)[0] == before
    after = before + result.tx_rows
    _probed(result, client, service, timeout,
            lambda: client.post(f"{base}/_double/komm/tx", content=body, headers=HEADERS,
                                timeout=timeout),
            lambda count: count == after)


def _probe_resubscribe(result: Measured, client: httpx.Client, service: ServerProcess,
                       base: str, timeout: float) -> None:
    rows = result.initial_rows + result.tx_rows + DEMO_BLOCKED
    # a recovery logged before the drop (a ping timeout on a loaded machine) is not this one
    earlier = service.output().count("recovered after")
    _probed(result, client, service, timeout,
            lambda: client.post(f"{base}/_double/drop"),
            lambda count: service.output().count("recovered after") > earlier
            and count == rows)


def _probed(result: Measured, client: httpx.Client, service: ServerProcess, timeout: float,
            start: Callable[[], object], done: Callable[[int | None], bool]) -> None:
    """Probe the service while `start()` sets off work in it, until `done(rows of
    blocked_ips)`; fills `result`'s window figures."""
    assert service.proc is not None
    pid = service.proc.pid
    result.rss_before = proc_status(pid, "VmRSS")
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # reset VmHWM to the current RSS
    except OSError:
        pass  # then VmHWM is the peak since start: still an upper bound
    window: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        with httpx.Client(timeout=30) as prober:
            while not stop.is_set():
                sent = time.perf_counter()
                response = prober.post(f"{service.url}/mta-hook", content=CONNECT,
                                       headers=HEADERS)
                answered = time.perf_counter()
                answer = response.json() if response.status_code == 200 else {}
                status = (answer.get("response") or {}).get("status", "")
                result.actions.add(f"{answer.get('action', response.status_code)} "
                                   f"{status}".strip())
                if window and sent >= window[0] and (len(window) == 1 or sent <= window[1]):
                    result.latencies_ms.append((answered - sent) * 1000)
                time.sleep(PROBE_GAP_S)

    thread = threading.Thread(target=probe, name="big-update-probe", daemon=True)
    thread.start()
    time.sleep(0.2)
    window.append(time.perf_counter())
    start()
    deadline = time.monotonic() + timeout
    while True:
        count, age = _metrics(client, service.url)
        result.max_age_s = max(result.max_age_s, age)
        if count is not None:
            result.row_counts_seen.add(count)
        if done(count):
            break
        assert time.monotonic() < deadline, "the work was not done in time"
        time.sleep(0.02)
    window.append(time.perf_counter())
    result.apply_s = window[1] - window[0]
    stop.set()
    thread.join(30)
    result.rss_peak = proc_status(pid, "VmHWM")
    result.rss_after = proc_status(pid, "VmRSS")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _wait(check: object, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(0.05)
