"""Hostile clients against a real `komm-policy serve` process, continued (issue 9 §4):
bodies that stall cannot take the concurrency slots; oversized and malformed requests
get one JSON 4xx answer, then the connection closes."""

from __future__ import annotations

import concurrent.futures
import socket
import time

import pytest

from .serverproc import Deployment, ServerProcess
from .test_connections import closed_by_peer, connect, hook_request, metric, read_response


@pytest.fixture()
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    return Deployment(tmp_path_factory.mktemp("limits"))


def stall_bodies(port: int, count: int) -> list[socket.socket]:
    """`count` connections that send a header with Content-Length: 1000 and 10 bytes."""
    stalled = []
    for _ in range(count):
        sock = connect(port)
        sock.sendall(hook_request(b'{"context"', length=1000))
        stalled.append(sock)
    return stalled


def real_requests(port: int, count: int) -> list[tuple[int, bytes, float]]:
    def one(_: int) -> tuple[int, bytes, float]:
        started = time.monotonic()
        with connect(port) as sock:
            sock.sendall(hook_request())
            status, _headers, body = read_response(sock, 5)
            return status, body, time.monotonic() - started

    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def test_stalled_bodies_do_not_take_the_concurrency_slots(deployment: Deployment) -> None:
    with ServerProcess(deployment, "--no-watch", "--max-concurrency", "20",
                       "--body-timeout", "30") as server:
        stalled = stall_bodies(server.port, 30)
        try:
            time.sleep(0.3)
            answers = real_requests(server.port, 10)
            assert [(status, body) for status, body, _ in answers] == [
                (200, b'{"action":"accept"}')] * 10
            slowest = max(elapsed for _, _, elapsed in answers)
            assert slowest < 1, f"slowest real request took {slowest:.2f} s"
            # Also the ASGI way (a body arriving after its header) is not shed.
            with connect(server.port) as sock:
                request = hook_request()
                split = request.index(b"\r\n\r\n") + 8
                sock.sendall(request[:split])
                time.sleep(0.1)
                sock.sendall(request[split:])
                assert read_response(sock, 5)[:3:2] == (200, b'{"action":"accept"}')
            assert metric(server, "komm_http_requests_shed_total") == 0
            assert metric(server, "komm_http_requests_in_progress") == 1  # /metrics itself
            for sock in stalled:  # still waiting, not answered
                sock.settimeout(0)
                with pytest.raises(BlockingIOError):
                    sock.recv(1)
        finally:
            for sock in stalled:
                sock.close()


def test_stalled_bodies_are_evicted_when_connections_run_short(
        deployment: Deployment) -> None:
    with ServerProcess(deployment, "--no-watch", "--max-connections", "20",
                       "--body-timeout", "30") as server:
        stalled = stall_bodies(server.port, 30)
        try:
            answers = real_requests(server.port, 10)
            assert [(status, body) for status, body, _ in answers] == [
                (200, b'{"action":"accept"}')] * 10
            assert max(elapsed for _, _, elapsed in answers) < 1
            assert metric(server, 'komm_http_connections_closed_total{reason="evicted"}') >= 10
            assert sum(closed_by_peer(sock, 0.05) for sock in stalled) >= 10
        finally:
            for sock in stalled:
                sock.close()
