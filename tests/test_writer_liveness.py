"""A writer whose heartbeat is late is killed only when it is hung, not when it is
waiting for CPU (`decisionlog.liveness`); the writer can run under SCHED_IDLE
(`LogSettings.writer_sched_idle`).  Real writer processes, real /proc."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from komm_policy.decisionlog import liveness
from komm_policy.decisionlog.liveness import Liveness, ProcessSample, sample, starved

from .test_decisionlog import decided
from .test_decisionlog_process import assert_all_stored, open_log, paths  # noqa: F401

LINUX = Path("/proc/self/stat").exists()


@pytest.mark.skipif(not LINUX, reason="/proc")
def test_a_sample_reads_state_and_cpu_of_a_real_process() -> None:
    start = sample(os.getpid())
    assert start is not None and start.state == "R"  # this process, running
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:
        pass
    later = sample(os.getpid())
    assert later is not None and later.cpu >= start.cpu
    assert sample(2**22 + 12345) is None  # above pid_max: no such process
    assert sample(None) is None


def test_a_sample_parses_a_command_name_with_parentheses_and_spaces(tmp_path: Path) -> None:
    (tmp_path / "77").mkdir()
    fields = ["S", "1", "77", "77", "0", "-1", "4194560", "9", "0", "0", "0", "250", "50"]
    (tmp_path / "77" / "stat").write_text("77 (komm ) (x) y) " + " ".join(fields) + " 0 0\n")
    found = sample(77, tmp_path)
    assert found is not None and found.state == "S"
    assert found.cpu == pytest.approx(300 / os.sysconf("SC_CLK_TCK"))
    (tmp_path / "77" / "stat").write_text("77 (cut")
    assert sample(77, tmp_path) is None


@pytest.mark.parametrize(("now", "at_beat", "late", "expected"), [
    (ProcessSample("R", 10.05), ProcessSample("R", 10.0), 40.0, True),   # waiting for CPU
    (ProcessSample("R", 45.0), ProcessSample("R", 10.0), 40.0, False),   # spinning
    (ProcessSample("S", 10.0), ProcessSample("R", 10.0), 40.0, False),   # asleep: hung
    (ProcessSample("D", 10.0), ProcessSample("R", 10.0), 40.0, False),   # stuck on a disk
    (ProcessSample("T", 10.0), ProcessSample("R", 10.0), 40.0, False),   # stopped
    (None, ProcessSample("R", 10.0), 40.0, False),                        # no /proc
    (ProcessSample("R", 10.0), None, 40.0, False),                        # no sample at beat
])
def test_starved_only_when_runnable_and_given_almost_no_cpu(
        now: ProcessSample | None, at_beat: ProcessSample | None, late: float,
        expected: bool) -> None:
    assert starved(now, at_beat, late) is expected


@pytest.mark.skipif(not LINUX, reason="/proc")
def test_a_stopped_writer_is_still_restarted(paths: tuple[Path, Path, Path]  # noqa: F811
                                             ) -> None:
    decision_log = open_log(paths, writer_stall=1.0)
    try:
        victim = decision_log.writer_pid
        assert victim is not None
        time.sleep(0.5)
        os.kill(victim, signal.SIGSTOP)  # state T: not waiting for CPU
        deadline = time.monotonic() + 15
        while decision_log.writer_pid == victim:
            assert time.monotonic() < deadline, "a stopped writer was never restarted"
            time.sleep(0.05)
        _submit_one(decision_log)
    finally:
        decision_log.close()
    assert_all_stored(paths, 1)


def _submit_one(decision_log: Any) -> None:
    """One decision through the (restarted or resumed) writer, waited for."""
    request, decision = decided("derived-rcpt-2")
    assert decision_log.submit_decision(request, decision, 0.3, time.time())
    assert decision_log.flush(timeout=15)


@pytest.mark.skipif(not LINUX, reason="/proc")
def test_a_late_writer_waiting_for_cpu_is_not_killed(
        paths: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch  # noqa: F811
        ) -> None:
    """Starvation as /proc shows it (runnable, no CPU used since the last heartbeat),
    stood in for: the writer is stopped, and the supervisor's samples say "R"."""
    monkeypatch.setattr(liveness, "sample", lambda pid: ProcessSample("R", 1.0))
    decision_log = open_log(paths, writer_stall=1.0)
    try:
        victim = decision_log.writer_pid
        assert victim is not None
        time.sleep(0.5)
        os.kill(victim, signal.SIGSTOP)
        time.sleep(3.0)  # three times writer_stall
        assert decision_log.writer_pid == victim and decision_log.restarts == 0
        os.kill(victim, signal.SIGCONT)
        _submit_one(decision_log)
    finally:
        decision_log.close()
    assert_all_stored(paths, 1)


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling policy")
def test_the_writer_runs_under_sched_idle_when_set(paths: tuple[Path, Path, Path]  # noqa: F811
                                                   ) -> None:
    decision_log = open_log(paths, writer_sched_idle=True)
    try:
        writer = decision_log.writer_pid
        assert writer is not None
        deadline = time.monotonic() + 15
        while os.sched_getscheduler(writer) != os.SCHED_IDLE:  # set once it has started
            assert time.monotonic() < deadline, "the writer never went to SCHED_IDLE"
            time.sleep(0.05)
        request, decision = decided("derived-rcpt-2")
        for _ in range(20):
            assert decision_log.submit_decision(request, decision, 0.3, time.time())
        assert decision_log.flush(timeout=15)
    finally:
        decision_log.close()
    assert_all_stored(paths, 20)
    default = open_log((paths[0].with_name("other.jsonl"), paths[1],
                        paths[2].with_name("spool2")))
    try:
        writer = default.writer_pid
        assert writer is not None
        time.sleep(1.0)
        assert os.sched_getscheduler(writer) == os.SCHED_OTHER  # the default: nice
    finally:
        default.close()


@pytest.mark.skipif(not LINUX, reason="/proc")
def test_liveness_calls_a_late_sleeping_process_hung_and_a_fresh_one_not() -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        deadline = time.monotonic() + 10
        while (found := sample(sleeper.pid)) is None or found.state != "S":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        judge = Liveness()
        beat = time.time()
        assert not judge.hung(sleeper.pid, beat, 30.0)  # on time
        assert judge.hung(sleeper.pid, beat, 30.0, now=beat + 31)  # late and asleep
        assert not judge.hung(sleeper.pid, beat + 30, 30.0, now=beat + 31)  # it beat
    finally:
        sleeper.kill()
        sleeper.wait()
