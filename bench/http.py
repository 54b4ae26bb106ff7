"""HTTP: `POST /mta-hook` on uvicorn vs a no-op Starlette endpoint, driven by wrk.

Both servers run under the same uvicorn settings (uvloop + httptools, access log off,
same worker count) on loopback, in separate processes from wrk.  They are measured
alternately (no-op, komm, no-op, komm, …) so drift on this shared machine hits both.
komm-policy runs as deployed: shipped policies, demo SQLite store, decision log on.
At the highest connection count a fourth server adds the SpacetimeDB reducer sink
(`[log] spacetimedb`, its default of 500 records a call) against the SpacetimeDB
double, which runs in a thread of this process (so its CPU, parsing every call,
competes on this machine too).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from komm_policy.demo import DEMO_TABLES
from komm_policy.directory.sqlite import create_database

ROOT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).with_name("rcpt.lua")
REQUEST = ROOT / "tests" / "fixtures" / "stalwart" / "derived-rcpt-1.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, command: list[str], port: int, cwd: Path,
                 env: dict[str, str] | None = None) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/mta-hook"
        # stderr to a file (a pipe nobody reads could fill up); it lives as long as the
        # server and is closed by stop().
        self.errors = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL,
                                     stderr=self.errors, start_new_session=True,
                                     env={**os.environ, **(env or {})})
        body = REQUEST.read_bytes()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if httpx.post(self.url, content=body, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        self.errors.seek(0)
        output = self.errors.read().decode(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"server did not start: {output}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.errors.close()


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, connections: int, seconds: float) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
         "-s", str(LUA), url, "--", str(REQUEST)],
        capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    latency = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+(?:us|ms|s))\s*$", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{errors.group(1)} failed requests against {url}")
    return {"rps": rps, "p50_ms": _ms(latency["50"]), "p99_ms": _ms(latency["99"])}


def _deployment() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="komm-bench-http-"))
    shutil.copytree(ROOT / "policies", folder / "policies")
    create_database(folder / "komm.sqlite3", DEMO_TABLES)
    return folder


def _double() -> Any:
    """The SpacetimeDB double serving a module with the decision-log reducer
    (`log_decisions(records: Vec<DecisionRecord>)`, docs/spacetimedb-log.md)."""
    from tests.spacetimedb_double import DoubleServer
    return DoubleServer({"databases": {"komm": {
        "types": {"DecisionRecord": {"struct": {"id": "String", "record": "String"}}},
        "reducers": {"log_decisions": [["records", "Array<Ref:DecisionRecord>"]]},
        "tables": {}}}}).start()


def _forget_calls(double: Any) -> None:
    """Drop what the double recorded (it keeps every call): memory stays bounded."""
    database = double.state.databases["komm"]
    database.calls.clear()
    database.logged.clear()


def _servers(folder: Path, workers: int, double: Any = None) -> dict[str, Server]:
    """The no-op baseline, komm-policy as deployed, komm-policy without its decision
    log (to show what the log costs), and with `double`, komm-policy whose log also
    feeds the SpacetimeDB reducer sink."""
    servers: dict[str, Server] = {}
    try:
        _start(servers, folder, workers, double)
    except BaseException:
        for server in servers.values():
            server.stop()
        raise
    return servers


def _start(servers: dict[str, Server], folder: Path, workers: int, double: Any) -> None:
    port = _free_port()
    servers["noop"] = Server([sys.executable, "-m", "uvicorn", "bench.noop_app:app",
                              "--host", "127.0.0.1", "--port", str(port), "--workers",
                              str(workers), "--log-level", "warning", "--no-access-log"],
                             port, ROOT)
    variants = [("komm", ["--log-jsonl", "decisions.jsonl"]),
                ("komm_nolog", ["--log-jsonl", ""])]
    if double is not None:
        variants.append(("komm_stdb", ["--log-jsonl", "decisions-stdb.jsonl"]))
    for name, log_flags in variants:
        port = _free_port()
        env = {"KOMM_LOG_SQLITE": "false"} if name == "komm_nolog" else {}
        if name == "komm_stdb":
            env = {"KOMM_LOG_SPACETIMEDB": f"spacetimedb://127.0.0.1:{double.port}/komm",
                   "KOMM_LOG_SPOOL": "var/spool-stdb",
                   "KOMM_LOG_SPACETIMEDB_DEAD_LETTER": "var/stdb-dead-letter.jsonl"}
        servers[name] = Server([sys.executable, "-m", "komm_policy", "serve", "--host",
                                "127.0.0.1", "--port", str(port), "--workers", str(workers),
                                "--policies", "policies", "--directory", "sqlite:komm.sqlite3",
                                *log_flags, "--no-watch", "--log-level", "warning"],
                               port, folder, env)


def run(*, workers: tuple[int, ...], connections: tuple[int, ...], seconds: float,
        rounds: int, sink: bool = True, log: Any = print) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        return {"skipped": "wrk is not installed (Debian package wrk; `make bench` installs "
                           "it)"}
    rows = []
    for worker_count in workers:
        folder = _deployment()
        double = _double() if sink else None
        try:
            servers = _servers(folder, worker_count, double)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            if double is not None:
                double.stop()
            raise
        try:
            for server in servers.values():  # warm them up
                wrk(server.url, max(connections), 1)
            for conns in connections:
                samples: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
                if conns != max(connections):  # the sink: at the highest count only
                    samples.pop("komm_stdb", None)
                for _ in range(rounds):
                    for name in samples:
                        samples[name].append(wrk(servers[name].url, conns, seconds))
                    if double is not None:
                        _forget_calls(double)
                row: dict[str, Any] = {"workers": worker_count, "connections": conns}
                for name, runs in samples.items():
                    for key in ("rps", "p50_ms", "p99_ms"):
                        row[f"{name}_{key}"] = statistics.median(r[key] for r in runs)
                    row[f"{name}_rps_runs"] = [r["rps"] for r in runs]
                row["ratio"] = row["komm_rps"] / row["noop_rps"]
                row["ratio_nolog"] = row["komm_nolog_rps"] / row["noop_rps"]
                # The machine's speed drifts between rounds (the no-op endpoint alone has
                # moved 1,100-3,900 req/s within one run at 1 connection): the median of
                # each round's ratio (komm and no-op measured back to back) is less moved
                # by it than the ratio of the medians.
                row["ratio_paired"] = statistics.median(
                    k["rps"] / n["rps"]
                    for k, n in zip(samples["komm"], samples["noop"], strict=True))
                with_sink = ""
                if "komm_stdb" in samples:
                    row["ratio_stdb"] = row["komm_stdb_rps"] / row["noop_rps"]
                    with_sink = f", with the SpacetimeDB sink: {row['ratio_stdb']:.2f}"
                rows.append(row)
                log(f"  workers={worker_count} connections={conns:>2}: komm "
                    f"{row['komm_rps']:8.0f} req/s (p50 {row['komm_p50_ms']:.2f} ms, p99 "
                    f"{row['komm_p99_ms']:.2f} ms)  no-op {row['noop_rps']:8.0f} req/s  "
                    f"ratio {row['ratio']:.2f}, paired {row['ratio_paired']:.2f} (log off: "
                    f"{row['ratio_nolog']:.2f}"
                    f"{with_sink})")
        finally:
            for server in servers.values():
                server.stop()
            if double is not None:
                double.stop()
            shutil.rmtree(folder, ignore_errors=True)
    return {"rows": rows, "request": REQUEST.name, "seconds": seconds, "rounds": rounds}
