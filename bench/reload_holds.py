"""`python -m bench.reload_holds [--before TREE]`: the longest interpreter-lock hold of a
policy reload, in CPU time, so a busy machine does not count (`bench.reload` measures
answer times against a real server, which a busy machine blurs).

In a fresh process per measurement (this tree's code, or `--before`'s), a `HookService`
over the shipped policies plus one file with a `--terms`-term condition reloads in a
worker thread, then keeps allocating for a while as request handling would (the
collections a reload leaves happen then).  A watch thread ticks every ms; for each tick
it takes the CPU time the worker used meanwhile and its own (a collection it ran): the
longest of these is the longest step that held the lock.  Variants alternate, each
measured `--rounds` times; min and median are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from .reload import POLICIES, shapes

CHILD = r'''
import json, shutil, sys, tempfile, threading, time
from pathlib import Path
from komm_policy.demo import DEMO_TABLES
from komm_policy.directory.memory import InMemoryDirectory
from komm_policy.hook.service import HookService
from komm_policy.policyset import load_path
text = Path(sys.argv[2]).read_text()
root = Path(tempfile.mkdtemp())
policies = root / "policies"
shutil.copytree(sys.argv[1], policies)
(policies / "05-big.policy").write_text("# 0\n" + text)
frozen = "freeze_sets" in HookService.__dataclass_fields__  # as `serve` runs it
service = HookService(policy_set=load_path(policies, **({"frozen": True} if frozen else {}))
                      .policy_set, directory=InMemoryDirectory(DEMO_TABLES),
                      policies_path=policies, **({"freeze_sets": True} if frozen else {}))
(policies / "05-big.policy").write_text("# 1\n" + text)
sys.setswitchinterval(0.001)
clock, go, done, watched = [], threading.Event(), threading.Event(), threading.Event()
def work():
    clock.append(time.pthread_getcpuclockid(threading.get_ident()))
    go.wait()
    assert service.reload().ok
    getattr(service, "free_retired", lambda: 0)()
    end = time.monotonic() + 2.0
    junk = []
    while time.monotonic() < end:  # what request handling allocates meanwhile
        junk.append([{"a": [i]} for i in range(50)])
        if len(junk) > 200:
            junk.clear()
    done.set()
    watched.wait()  # its CPU clock is read until the watch ends
def queued():  # seconds runnable but not running (Linux schedstat)
    with open("/proc/thread-self/schedstat", "rb") as f:
        return int(f.read().split()[1]) / 1e9
worker = threading.Thread(target=work)
worker.start()
while not clock:
    time.sleep(0.001)
longest, start = 0.0, time.perf_counter()
last = (start, time.clock_gettime(clock[0]), time.thread_time(), queued())
go.set()
while not done.is_set():
    time.sleep(0.001)
    now = (time.perf_counter(), time.clock_gettime(clock[0]), time.thread_time(), queued())
    blocked = (now[0] - last[0]) - 0.001 - (now[2] - last[2]) - (now[3] - last[3])
    longest = max(longest, min(blocked, now[1] - last[1]), now[2] - last[2])
    last = now
watched.set()
worker.join()
shutil.rmtree(root)
print(json.dumps({"hold_ms": longest * 1e3, "seconds": time.perf_counter() - start}))
'''


def measure(tree: str | None, text: str) -> dict[str, float]:
    here = str(Path(__file__).resolve().parent.parent)
    with tempfile.TemporaryDirectory() as tmp:
        policy = Path(tmp) / "big.policy"
        policy.write_text(text)
        out = subprocess.run([sys.executable, "-c", CHILD, str(POLICIES), str(policy)],
                             env={**os.environ, "PYTHONPATH": tree or here}, cwd=tmp,
                             capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--terms", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--shapes", default="or-chain,list")
    parser.add_argument("--before", metavar="TREE", help="another komm-policy source tree")
    args = parser.parse_args()
    variants = {"after": None, "before": args.before} if args.before else {"this": None}
    for shape in args.shapes.split(","):
        holds: dict[str, list[float]] = {label: [] for label in variants}
        for _ in range(args.rounds):
            for label, tree in variants.items():
                text = shapes(args.terms)[shape]
                holds[label].append(measure(tree, text)["hold_ms"])
        for label, values in holds.items():
            print(f"{shape:9} {label:6} longest lock hold (CPU ms): min {min(values):7.1f}"
                  f"  median {statistics.median(values):7.1f}  max {max(values):7.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
