"""The decision log's /metrics families, read from one `LogStatus`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from komm_policy.decisionlog.log import LogStatus
from komm_policy.decisionlog.metrics import register_log_metrics


class _Log:
    def __init__(self, status: LogStatus) -> None:
        self._status = status

    def status(self) -> LogStatus:
        return self._status


def test_every_family_carries_its_status_value() -> None:
    status = LogStatus(
        alive=True, restarts=3, next_seq=17, held=0, spool_errors=2, spool_failing="disk",
        tempfails=4, unrecordable=6, dropped=5, backlog={"jsonl": 1, "spacetimedb": 7},
        oldest_age={"jsonl": 0.5, "spacetimedb": 9.0}, sink_errors={"spacetimedb": 3},
        blocked_sinks={"spacetimedb": "404"},
        sink_counters={"spacetimedb": {"dead_letters": 2}}, spool_skipped_bytes=230,
        spool_lost_records=8, state_recoveries=1)
    registry = CollectorRegistry()
    register_log_metrics(registry, _Log(status))  # type: ignore[arg-type]
    samples = {line for line in generate_latest(registry).decode().splitlines()
               if not line.startswith("#")}
    assert samples == {
        "komm_decision_log_writer_alive 1.0",
        "komm_decision_log_writer_restarts_total 3.0",
        "komm_decision_log_spool_errors_total 2.0",
        "komm_decision_log_spool_tempfails_total 4.0",
        "komm_decision_log_unrecordable_total 6.0",
        "komm_decision_log_dropped_records_total 5.0",
        "komm_decision_log_spool_failing 1.0",
        "komm_decision_log_spooled_records_total 17.0",
        "komm_decision_log_spool_skipped_bytes_total 230.0",
        "komm_decision_log_spool_lost_records_total 8.0",
        "komm_decision_log_state_set_aside 1.0",
        'komm_decision_log_backlog_records{sink="jsonl"} 1.0',
        'komm_decision_log_backlog_records{sink="spacetimedb"} 7.0',
        'komm_decision_log_oldest_unwritten_seconds{sink="jsonl"} 0.5',
        'komm_decision_log_oldest_unwritten_seconds{sink="spacetimedb"} 9.0',
        'komm_decision_log_sink_errors_total{sink="jsonl"} 0.0',
        'komm_decision_log_sink_errors_total{sink="spacetimedb"} 3.0',
        'komm_decision_log_sink_blocked{sink="jsonl"} 0.0',
        'komm_decision_log_sink_blocked{sink="spacetimedb"} 1.0',
        'komm_decision_log_dead_letters_total{sink="spacetimedb"} 2.0',
    }
