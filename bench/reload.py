"""`python -m bench.reload [--rounds N] [--terms N]`: answers held up by a policy reload.

A real `komm-policy serve` (loopback, SQLite demo store) answers a client that sends one
small hook request every millisecond on a kept-alive connection.  Rounds interleave a
*baseline* window (no reload) and a *reload* window (a policy set with one condition of
`--terms` terms is written, SIGHUP, until the log says it is live, plus a settling tail);
each window reports the longest answer time (ms) of a request sent in it.  The figures
are min and median over the rounds of each kind, measured side by side in one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from komm_policy.demo import DEMO_TABLES
from komm_policy.directory.sqlite import create_database

POLICIES = Path(__file__).resolve().parent.parent / "policies"
REQUEST = json.dumps({"context": {"stage": "connect",
                                  "client": {"ip": "192.0.2.7", "helo": "mx.example"}}})
SETTLE_SECONDS = 0.5
"""Time after the set went live still counted to its reload (a collection it left)."""


def shapes(terms: int) -> dict[str, str]:
    """Policy files with one condition of `terms` terms, in the shapes the grammar allows:
    a list literal in a rule, an `or` chain, a named list (`let`), a network list."""
    addresses = ", ".join(f'"u{i}@x.example"' for i in range(terms))
    networks = ", ".join(f"10.{i // 250 % 250}.{i % 250}.0/24" for i in range(terms))
    chain = " or ".join(f'rcpt == "u{i}@x.example"' for i in range(terms))
    rule = 'stage rcpt {{\n rule big: when {} reject 550 5.7.1 "no"\n}}\n'
    return {
        "list": rule.format(f"rcpt in [{addresses}]"),
        "or-chain": rule.format(chain),
        "let-list": f"let big = [{addresses}]\n" + rule.format("rcpt in big"),
        "networks": ('stage connect {\n rule big: when client.ip in [' + networks
                     + '] reject 550 5.7.1 "no"\n}\n'),
    }


class Client:
    """One kept-alive connection sending `REQUEST` every `period` seconds from a thread;
    `answers` holds (sent at, answer time) in seconds, perf_counter clock."""

    def __init__(self, port: int, period: float = 0.001) -> None:
        self.port, self.period = port, period
        self.answers: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        body = REQUEST.encode()
        self._request = (b"POST /mta-hook HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: application/json\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body)
        self.error: BaseException | None = None

    def __enter__(self) -> Client:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                while not self._stop.is_set():
                    sent = time.perf_counter()
                    sock.sendall(self._request)
                    _read_answer(sock)
                    done = time.perf_counter()
                    self.answers.append((sent, done - sent))
                    pause = sent + self.period - time.perf_counter()
                    if pause > 0:
                        time.sleep(pause)
        except BaseException as exc:  # reported by the caller, which sees no answers
            self.error = exc

    def longest(self, start: float, end: float) -> float:
        """The longest answer time (s) of a request sent in [start, end]."""
        times = [t for sent, t in list(self.answers) if start <= sent <= end]
        if not times:
            raise RuntimeError(f"no answers in the window (client error: {self.error!r})")
        return max(times)


def _read_answer(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        body += chunk
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"unexpected answer {head[:40]!r}")
    return body


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`komm-policy serve` in its own process, over a copy of the shipped policies (of the
    tree on `PYTHONPATH` in `extra_env`, when given: an earlier tree may lack a built-in
    this tree's policies call)."""

    def __init__(self, root: Path, extra_env: dict[str, str] | None = None) -> None:
        self.root = root
        self.policies = root / "policies"
        source = (extra_env or {}).get("PYTHONPATH")
        shutil.copytree(Path(source) / "policies" if source else POLICIES, self.policies)
        database = root / "komm.sqlite3"
        create_database(database, DEMO_TABLES)
        self.port = _free_port()
        self.output = root / "server.log"
        self._out = self.output.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "komm_policy", "serve", "--host", "127.0.0.1",
             "--port", str(self.port), "--policies", str(self.policies),
             "--directory", f"sqlite:{database}"],
            stdout=self._out, stderr=subprocess.STDOUT, cwd=root,
            env={**os.environ, **(extra_env or {})})
        self._wait(lambda: b"Uvicorn running" in self.output.read_bytes()
                   or b"Application startup complete" in self.output.read_bytes(), 30)
        self._reloads = 0

    def _wait(self, done: Callable[[], bool], seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not done():
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.output.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out:\n{self.output.read_text()[-2000:]}")
            time.sleep(0.01)

    def reload(self, text: str, seconds: float = 120) -> None:
        """Write `text` as the one extra policy file, SIGHUP, wait until it is live."""
        (self.policies / "05-big.policy").write_text(text, encoding="utf-8")
        self.proc.send_signal(signal.SIGHUP)
        self._reloads += 1
        want = self._reloads
        self._wait(lambda: self.output.read_bytes().count(b"policies reloaded") >= want,
                   seconds)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


@contextmanager
def serving(extra_env: dict[str, str] | None = None) -> Iterator[Server]:
    with tempfile.TemporaryDirectory(prefix="komm-reload-") as tmp:
        server = Server(Path(tmp), extra_env)
        try:
            yield server
        finally:
            server.close()


def measure(server: Server, text: str, rounds: int) -> dict[str, list[float]]:
    """Longest answer (ms) per window: `rounds` baseline windows and `rounds` reloads of
    `text`, interleaved (each reload differs from the last by a comment: a new version)."""
    out: dict[str, list[float]] = {"baseline_ms": [], "reload_ms": [], "reload_s": []}
    with Client(server.port) as client:
        time.sleep(0.5)
        for i in range(rounds):
            start = time.perf_counter()
            server.reload(f"# round {i}\n{text}")
            live = time.perf_counter()
            time.sleep(SETTLE_SECONDS)
            end = time.perf_counter()
            out["reload_ms"].append(client.longest(start, end) * 1e3)
            out["reload_s"].append(live - start)
            start = time.perf_counter()  # a window as long as the reload's, at most 3 s
            time.sleep(min(SETTLE_SECONDS + out["reload_s"][-1], 3.0))
            out["baseline_ms"].append(client.longest(start, time.perf_counter()) * 1e3)
    return out


def summary(values: list[float]) -> str:
    return (f"min {min(values):7.1f}  median {statistics.median(values):7.1f}  "
            f"max {max(values):7.1f}")


def run(*, terms: int = 20_000, rounds: int = 5, only: tuple[str, ...] = (),
        before: str | None = None, log: Any = print) -> dict[str, Any]:
    """Each shape on this tree's server and, with `before` (another komm-policy source
    tree, e.g. `git worktree add /tmp/before main`), on a server running that one,
    one round of each at a time."""
    results: dict[str, Any] = {"terms": terms, "rounds": rounds, "shapes": {}}
    trees = {"after": None, "before": before} if before else {"this": None}
    with contextlib.ExitStack() as stack:
        servers = {label: stack.enter_context(serving(
            {"PYTHONPATH": source} if source else None)) for label, source in trees.items()}
        for name, text in shapes(terms).items():
            if only and name not in only:
                continue
            rows: dict[str, dict[str, list[float]]] = {
                label: {"baseline_ms": [], "reload_ms": [], "reload_s": []}
                for label in servers}
            for i in range(rounds):
                for label, server in servers.items():
                    for key, values in measure(server, f"# {i}\n{text}", 1).items():
                        rows[label][key].extend(values)
            results["shapes"][name] = rows
            for label, row in rows.items():
                log(f"{name:9} {label:6} reload {statistics.median(row['reload_s']):5.2f} s;"
                    f" longest answer ms: baseline {summary(row['baseline_ms'])} | "
                    f"reload {summary(row['reload_ms'])}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--terms", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", default="", help="shapes, comma-separated")
    parser.add_argument("--before", metavar="TREE",
                        help="also serve this komm-policy source tree, rounds interleaved")
    args = parser.parse_args()
    run(terms=args.terms, rounds=args.rounds, before=args.before,
        only=tuple(s for s in args.only.split(",") if s))


if __name__ == "__main__":
    main()
