"""Freeing large graphs in slices (`release`), and building policy sets beside a serving
event loop without a step that holds the interpreter lock for long (a tester's reload of
a 20,000-term condition held answers up for ~465 ms)."""

from __future__ import annotations

import gc
import shutil
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from lark import Tree

from komm_policy.demo import DEMO_TABLES
from komm_policy.directory.memory import InMemoryDirectory
from komm_policy.hook.service import HookService
from komm_policy.parser import parse
from komm_policy.policyset import Source, compile_sources, load_path, retire_set
from komm_policy.release import release, release_tree
from komm_policy.runtime import decide
from komm_policy.wire import RequestError, decode_request

from .conftest import POLICIES

TERMS = 8_000
FIXTURES = POLICIES.parent / "tests" / "fixtures" / "stalwart"


class Node:
    """A plain object with a dictionary, weakly referable (to see it freed)."""

    def __init__(self, value: object = None) -> None:
        self.value = value
        self.others: list[Node] = []


@pytest.fixture(autouse=True)
def _unfrozen_after() -> Iterator[None]:
    """Frozen builds freeze every object of this test process: give them back to the
    collector afterwards, for the tests that run here next."""
    yield
    gc.unfreeze()


def test_release_frees_cycles_and_leaves_what_is_held_outside_alone() -> None:
    shared = Node("shared")
    shared.others.append(Node("child of shared"))
    root = Node("root")
    ring = [Node(i) for i in range(50)]
    for i, node in enumerate(ring):
        node.others.append(ring[(i + 1) % len(ring)])  # a cycle refcounts never free
    del node
    root.others.extend([ring[0], shared])
    watched = [weakref.ref(n) for n in (root, *ring)]
    del ring
    gc.disable()  # only `release` may free them here
    try:
        box = [root]
        del root
        found = release(box)
        assert box == []
        assert all(w() is None for w in watched)
        assert found >= 51
        # untouched: held by this test, and so is what it holds
        assert shared.value == "shared" and shared.others[0].value == "child of shared"
    finally:
        gc.enable()


def test_a_root_still_held_elsewhere_is_left_whole() -> None:
    root = Node("root")
    root.others.append(Node("child"))
    root.others[0].others.append(root)
    held = root
    box = [root]
    del root
    assert release(box) == 0
    assert held.others[0].value == "child" and held.others[0].others[0] is held


def test_release_tree_frees_every_node() -> None:
    leaves = [Tree("leaf", [str(i)]) for i in range(1000)]
    watched = weakref.ref(leaves[500])  # Tree has no slots: weakly referable
    tree = Tree("root", [Tree("mid", leaves[:500]), Tree("mid", leaves[500:])])
    del leaves
    box = [tree]
    del tree
    assert release_tree(box, Tree) == 1003
    assert box == [] and watched() is None


def _waiting_for_cpu() -> float:
    """Seconds this thread has been runnable but not running (Linux schedstat)."""
    with open("/proc/thread-self/schedstat", "rb") as f:
        return int(f.read().split()[1]) / 1e9


def _longest_hold(work: Callable[[], object]) -> float:
    """The longest step (s) of `work`, run in a thread, that held the interpreter lock
    while another thread wanted it.  That thread ticks every ms; per tick, the time it
    waited for the lock (its wall time less the sleep, less its own CPU and its wait for
    a CPU) and the CPU time `work`'s thread used meanwhile: a hold is both, so the
    smaller counts.  A machine that stops either thread (steal time, a busy neighbour)
    does not count; a collection the ticking thread runs itself counts as its CPU."""
    done, ready, watched = threading.Event(), threading.Event(), threading.Event()
    go = threading.Event()
    clock: list[int] = []

    def run() -> None:
        clock.append(time.pthread_getcpuclockid(threading.get_ident()))
        ready.set()
        go.wait()
        try:
            work()
        finally:
            done.set()
            watched.wait()  # its CPU clock is read until the watch ends

    previous = sys.getswitchinterval()
    sys.setswitchinterval(0.001)  # as the service runs (`hook.app.SWITCH_INTERVAL`)
    worker = threading.Thread(target=run)
    try:
        worker.start()
        ready.wait()
        longest = 0.0
        wall, cpu, own, queued = (time.perf_counter(), time.clock_gettime(clock[0]),
                                  time.thread_time(), _waiting_for_cpu())
        go.set()
        while not done.is_set():
            time.sleep(0.001)
            now = (time.perf_counter(), time.clock_gettime(clock[0]), time.thread_time(),
                   _waiting_for_cpu())
            blocked = (now[0] - wall) - 0.001 - (now[2] - own) - (now[3] - queued)
            longest = max(longest, min(blocked, now[1] - cpu), now[2] - own)
            wall, cpu, own, queued = now
    finally:
        watched.set()
        worker.join()
        sys.setswitchinterval(previous)
    return longest


def _chain(terms: int) -> str:
    condition = " or ".join(f'rcpt == "u{i}@x.example"' for i in range(terms))
    return f'stage rcpt {{\n rule big: when {condition} reject 550 5.7.1 "no"\n}}\n'


def test_the_watch_sees_a_long_hold() -> None:
    """The measurement can fail: freeing a parse tree in one go is one long C step."""
    from komm_policy.grammar import lark_parser

    text = _chain(TERMS)
    trees = [lark_parser().parse(text, start="start")]
    assert _longest_hold(trees.clear) > 0.015


def test_a_frozen_build_and_retirement_hold_the_lock_only_briefly() -> None:
    """Build a set with one 8,000-term condition as the service does (frozen, parse tree
    and checker structures freed in slices), then free it: no step holds the lock for
    more than a few ms of CPU (before: 50-450 ms, in collections and frees)."""
    sources = [Source("big.policy", _chain(TERMS))]
    compile_sources(sources, frozen=True)  # the grammar and imports, outside the watch
    built: list[object] = []
    hold = _longest_hold(lambda: built.append(compile_sources(sources, frozen=True)))
    loaded = built.pop()
    box = [loaded.policy_set]  # type: ignore[attr-defined]
    del loaded
    watched = weakref.ref(box[0])
    retire_hold = _longest_hold(lambda: retire_set(box))  # type: ignore[arg-type]
    assert watched() is None
    assert hold < 0.03, f"a build step held the lock for {hold * 1e3:.1f} ms"
    assert retire_hold < 0.03, f"a retire step held the lock for {retire_hold * 1e3:.1f} ms"


def test_a_retired_set_leaves_nothing_frozen_behind() -> None:
    """Frozen objects are never collected: a reload must free the set it replaces and
    its own intermediate structures, or each reload would leak a policy set."""
    texts = [(POLICIES / name).read_text() for name in sorted(
        p.name for p in POLICIES.glob("*.policy"))]

    def build(i: int) -> object:
        sources = [Source(f"{k}.policy", t) for k, t in enumerate(texts)]
        sources.append(Source("9.policy", f"# {i}\n" + _chain(40)))
        return compile_sources(sources, frozen=True).policy_set

    counts = []
    for i in range(6):
        policy_set = build(i)
        assert policy_set is not None
        assert parse(_chain(3)).file is not None
        box = [policy_set]
        del policy_set
        retire_set(box)  # type: ignore[arg-type]
        counts.append(gc.get_freeze_count())
    growth = counts[-1] - counts[2]
    assert growth < 2_000, f"frozen objects grew by {growth} over 3 reloads: {counts}"


def test_a_frozen_set_decides_like_an_unfrozen_one() -> None:
    """Freeing the intermediate structures in slices leaves the set itself intact: the
    shipped policies decide every Stalwart fixture alike, built either way."""
    sources = [Source(p.name, p.read_text()) for p in sorted(POLICIES.glob("*.policy"))]
    plain = compile_sources(sources).policy_set
    frozen = compile_sources(sources, frozen=True).policy_set
    assert plain is not None and frozen is not None
    directory = InMemoryDirectory(DEMO_TABLES)
    fixtures = sorted(FIXTURES.glob("*.json"))
    assert len(fixtures) > 10
    for path in fixtures:
        try:
            request = decode_request(path.read_bytes())
        except RequestError:
            continue
        want = decide(plain, request, directory)
        got = decide(frozen, request, directory)
        assert (got.action, got.rule, got.stage) == (want.action, want.rule, want.stage), path


def test_a_reload_frees_the_set_it_replaced_once_no_request_holds_it(tmp_path: Path) -> None:
    """The service's reload retires the replaced set; one a request still holds waits in
    the queue (`retry_after` asks for another look) and is freed by `free_retired`."""
    policies = tmp_path / "policies"
    shutil.copytree(POLICIES, policies)
    first = load_path(policies).policy_set
    assert first is not None
    service = HookService(policy_set=first, directory=InMemoryDirectory(DEMO_TABLES),
                          policies_path=policies)
    watched = weakref.ref(first)
    del first
    (policies / "05-big.policy").write_text(_chain(200))
    assert service.reload().ok
    assert watched() is None and service.retry_after is None

    in_flight = service.policy_set  # a request deciding on the current set
    (policies / "05-big.policy").write_text("# changed\n" + _chain(200))
    assert service.reload().ok and service.policy_set is not in_flight
    assert service.retry_after is not None and service.free_retired() == 1
    watched = weakref.ref(in_flight)
    del in_flight  # the request ends
    assert service.free_retired() == 0
    assert watched() is None and service.retry_after is None
