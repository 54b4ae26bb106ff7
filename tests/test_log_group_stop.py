"""A service manager's stop: SIGTERM to the whole process group (systemd's default
KillMode=control-group), against a real `komm-policy serve` and its writer process."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from .logstore import jsonl_ids, store_ids
from .serverproc import Deployment, ServerProcess
from .test_log_faults import REQUESTS, Load, wait_for_new_writer


@pytest.mark.parametrize("settled", [True, False], ids=["writer-running", "writer-starting"])
def test_sigterm_to_the_process_group_stops_quietly_and_loses_nothing(
        tmp_path: Path, settled: bool) -> None:
    """Settled: the writer runs (it ignores SIGTERM, drains when the service stops it).
    Starting: the signal may reach it before it could ignore it; the service then
    starts one more writer to drain the spool as it stops."""
    deployment = Deployment(tmp_path)
    server = ServerProcess(deployment, "--no-watch", "--log-level", "info")
    server.preexec_fn = os.setsid  # its own process group, as under a service manager
    server.start()
    writer = wait_for_new_writer(server, None)
    deadline = time.monotonic() + 20
    while settled and not (deployment.root / "var" / "spool" / "state.json").exists():
        assert time.monotonic() < deadline, "the writer did not start"
        time.sleep(0.05)
    load = Load(server.url, REQUESTS * 10).start()
    load.wait_for(REQUESTS // 3)
    assert server.proc is not None
    os.killpg(server.proc.pid, signal.SIGTERM)  # the service and its writer alike
    assert server.proc.wait(20) in (0, -signal.SIGTERM)
    load.stop()
    server.stop()
    deadline = time.monotonic() + 20
    while Path(f"/proc/{writer}").exists():  # (and any writer started to drain: a child)
        assert time.monotonic() < deadline, "the writer did not end"
        time.sleep(0.05)
    output = server.output()
    assert "restarting it" not in output and "ERROR" not in output, output
    ids = jsonl_ids(deployment.log_file)
    assert len(ids) == len(set(ids)) == load.decided >= REQUESTS // 3
    assert sorted(store_ids(deployment.database)) == sorted(ids)


def test_sighup_to_the_process_group_reloads_without_killing_the_writer(
        tmp_path: Path) -> None:
    """breaker3 #8: a SIGHUP to the group (a terminal hangup, a supervisor's reload) killed
    the writer ("exited (code -1); restarting it") and multiprocessing's resource tracker."""
    deployment = Deployment(tmp_path)
    server = ServerProcess(deployment, "--no-watch", "--log-level", "info")
    server.preexec_fn = os.setsid
    server.start()
    try:
        writer = wait_for_new_writer(server, None)
        load = Load(server.url, REQUESTS).start()
        load.wait_for(REQUESTS // 4)
        assert server.proc is not None
        for _ in range(2):
            os.killpg(server.proc.pid, signal.SIGHUP)
            time.sleep(0.5)
        load.join()
        assert Path(f"/proc/{writer}").exists()  # the same writer, alive
        assert server.post(b'{"context":{"stage":"connect","client":{"ip":"192.0.2.1"}}}'
                           ).status_code == 200
    finally:
        assert server.stop() in (0, -signal.SIGTERM)
    output = server.output()
    assert "restarting it" not in output and "ERROR" not in output, output
    assert "resource_tracker" not in output, output
    assert output.count("policies unchanged") == 2, output  # both reloads ran
    ids = jsonl_ids(deployment.log_file)
    assert len(ids) == len(set(ids)) == load.decided + 1
    assert sorted(store_ids(deployment.database)) == sorted(ids)
