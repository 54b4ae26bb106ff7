"""Start `komm-policy serve` as a real process (uvicorn) on a free loopback port."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import httpx

from komm_policy.demo import DEMO_TABLES
from komm_policy.directory.sqlite import create_database

from .conftest import POLICIES


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Deployment:
    """A working directory with a copy of the shipped policies and a demo database."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.policies = root / "policies"
        shutil.copytree(POLICIES, self.policies)
        self.database = root / "komm.sqlite3"
        create_database(self.database, DEMO_TABLES)
        self.log_file = root / "decisions.jsonl"


class ServerProcess:
    # Every process started, so conftest can stop one a failed test left running (it
    # would load the machine for the tests after it, and outlive the run).
    started: ClassVar[list[ServerProcess]] = []

    def __init__(self, deployment: Deployment, *args: str, **env: str) -> None:
        self.deployment = deployment
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = list(args)
        self.env = {**os.environ, **env}
        self.proc: subprocess.Popen[bytes] | None = None
        self.preexec_fn: Callable[[], None] | None = None  # e.g. to set resource limits
        self.output_path = deployment.root / f"server-{self.port}.log"

    def start(self) -> ServerProcess:
        d = self.deployment
        command = [
            sys.executable, "-m", "komm_policy", "serve",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--policies", str(d.policies),
            "--directory", f"sqlite:{d.database}",
            "--log-jsonl", str(d.log_file),
            *self.args,
        ]
        self._output = self.output_path.open("wb")
        self.proc = subprocess.Popen(command, stdout=self._output, stderr=subprocess.STDOUT,
                                     env=self.env, cwd=d.root, preexec_fn=self.preexec_fn)
        ServerProcess.started.append(self)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=0.5).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server did not start:\n{self.output()}")

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def post(self, body: bytes | str, **kwargs: object) -> httpx.Response:
        return httpx.post(f"{self.url}/mta-hook", content=body, timeout=5,
                          headers={"content-type": "application/json",
                                   **kwargs.pop("headers", {})},  # type: ignore[dict-item]
                          **kwargs)  # type: ignore[arg-type]

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> int:
        """SIGTERM, as a service manager would; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._output.close()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
