"""A spool that fills its own disk recovers by itself (a real `komm-policy serve` with
its spool on a small tmpfs; mounting one needs root, else the tests are skipped)."""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path

from komm_policy.decisionlog.spool import segment_name, segments

from .logstore import jsonl_ids, store_ids
from .serverproc import Deployment, ServerProcess
from .test_log_faults import Load, _mount_small_tmpfs


def _serve(deployment: Deployment, spool: Path) -> ServerProcess:
    return ServerProcess(deployment, "--no-watch", "--log-level", "warning",
                         KOMM_LOG_SPOOL=str(spool),
                         KOMM_LOG_SPOOL_FSYNC_INTERVAL="0").start()


def _spool_bytes(spool: Path) -> int:
    """Bytes in the spool's segments (one the writer removes meanwhile counts 0)."""
    total = 0
    for first in segments(spool):
        with contextlib.suppress(FileNotFoundError):
            total += (spool / segment_name(first)).stat().st_size
    return total


def test_a_spool_that_fills_its_disk_frees_it_and_accepts_again(tmp_path: Path) -> None:
    """The tester's reproducer on 256 KiB (a 1 MB tmpfs took 2,333 requests): the
    delivered segment used to stay, as saving the positions needed a new block."""
    deployment = Deployment(tmp_path)
    mount = tmp_path / "small"
    unmount = _mount_small_tmpfs(mount, 256)
    try:
        spool = mount / "spool"
        server = _serve(deployment, spool)
        try:
            load = Load(server.url, 3000).start()
            deadline = time.monotonic() + 60
            while load.tempfailed < 20:  # the spool filled the disk: 451 4.3.0
                assert time.monotonic() < deadline, (load.decided, load.tempfailed)
                time.sleep(0.02)
            load.stop()
            decided = load.decided
            deadline = time.monotonic() + 20
            # The writer frees the taken segments by itself, maybe before this looks
            # (so "the first segment" may already be the new one): wait until the spool
            # holds less than half the disk, sending one request at a time (a lone
            # request may be answered before that: one entry fits where a batch did not).
            while _spool_bytes(spool) > 128 * 1024:
                assert time.monotonic() < deadline, (_spool_bytes(spool), server.output())
                answered = Load(server.url, 1, threads=1).start()
                answered.join()
                decided += answered.decided
                time.sleep(0.2)
            after = Load(server.url, 100).start()
            after.join()
            assert after.decided == 100
            decided += after.decided
        finally:
            assert server.stop() in (0, -signal.SIGTERM)
    finally:
        unmount()
    ids = jsonl_ids(deployment.log_file)
    assert len(ids) == len(set(ids)) == decided
    assert sorted(store_ids(deployment.database)) == sorted(ids)
