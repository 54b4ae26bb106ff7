"""Records delivered are never counted lost: a writer that frees taken segments on a
full disk (`SpoolWriter.save`, ENOSPC) and is killed before it saves the positions past
them leaves tombstones (`spool_reader.TAKEN`), so the writer restarted from the older
positions counts nothing lost.  Real writer processes (one SIGKILLed at that point), a
real full disk (a small tmpfs: root only, else skipped), real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from komm_policy.decisionlog.spool import SpoolAppender, read_state, segments
from komm_policy.decisionlog.spool_reader import TAKEN

from .logstore import jsonl_ids
from .test_log_faults import _mount_small_tmpfs
from .test_spool import entries

WRITER = """
import json, os, signal, sys
from komm_policy.decisionlog import writer
from komm_policy.decisionlog.sinks import JsonlSpec

spool, out, batch, how = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if how == "killed":
    real, calls = writer.write_state, []

    def write_state(directory, state):
        calls.append(state)
        if len(calls) == 2:  # the save after freeing the full disk: killed before it
            os.kill(os.getpid(), signal.SIGKILL)
        real(directory, state)

    writer.write_state = write_state
w = writer.SpoolWriter(spool, [JsonlSpec(out)], batch=batch)
while w.step(force=True) and how != "once":
    pass
print(json.dumps(w.status()["corruption"]))
"""


def run_writer(spool: Path, out: Path, batch: int, how: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WRITER, str(spool), str(out), str(batch),
                           how], capture_output=True, text=True, timeout=60)


def test_segments_freed_on_a_full_disk_before_a_kill_are_not_counted_lost(
        tmp_path: Path) -> None:
    mount = tmp_path / "small"
    unmount = _mount_small_tmpfs(mount, 512)
    try:
        spool = mount / "spool"
        out = tmp_path / "decisions.jsonl"  # the sink's disk is not the full one
        appender = SpoolAppender(spool, fsync_interval=0, segment_bytes=4096)
        payloads = entries(120)
        for payload in payloads:
            appender.append(payload)
        appender.close()
        first = segments(spool)
        assert len(first) >= 4
        # A writer delivers a few records and saves its position in the first segment.
        done = run_writer(spool, out, 5, "once")
        assert done.returncode == 0, done.stderr
        assert read_state(spool)["positions"]["jsonl"][0] == first[0]
        # The disk fills up; the next writer delivers everything, cannot save (ENOSPC),
        # frees the taken segments and is killed before it saves.
        with (mount / "filler").open("wb", buffering=0) as filler:
            try:
                while True:
                    filler.write(b"\0" * 4096)
            except OSError:
                pass
        killed = run_writer(spool, out, 1000, "killed")
        assert killed.returncode == -9, (killed.returncode, killed.stderr)
        assert read_state(spool)["positions"]["jsonl"][0] == first[0]  # not saved
        assert segments(spool) == first[-1:]  # the taken ones were freed
        assert sorted(p.name for p in spool.glob("*" + TAKEN)), "no tombstone left"
        (mount / "filler").unlink()
        # Restarted from the older positions: nothing lost, every record delivered.
        restarted = run_writer(spool, out, 1000, "all")
        assert restarted.returncode == 0, restarted.stderr
        corruption = json.loads(restarted.stdout)
        assert corruption["records"] == 0, (corruption, restarted.stderr)
        assert "lost" not in restarted.stderr
        assert len(set(jsonl_ids(out))) == len(payloads)
        assert not list(spool.glob("*" + TAKEN))  # cleared once positions past them saved
    finally:
        unmount()
