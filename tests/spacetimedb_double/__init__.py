"""A faithful SpacetimeDB double: a real HTTP + WebSocket server on loopback.

It speaks SpacetimeDB's HTTP API (`/v1/identity`, `/sql`, `/schema?version=9`) and the
`v1.json.spacetimedb` subscription protocol with the exact shapes of SpacetimeDB's source
(reference note `spacetimedb.md`; captures in `tests/fixtures/spacetimedb/`), and injects
faults.  Run it by hand:

    python -m tests.spacetimedb_double --port 3000 [--spec spec.json] [--owner-token T]

`DoubleServer` runs one in a thread for tests; `DoubleControl` drives one over HTTP.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import httpx
import uvicorn

from .server import Double
from .state import State

__all__ = ["Double", "DoubleControl", "DoubleServer", "State", "free_port"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DoubleServer:
    """The double on 127.0.0.1:`port` in a background thread.  `stop()` closes the
    listening socket (connections are then refused) and `start()` opens it again on the
    same port with the same state."""

    def __init__(self, spec: dict[str, Any], port: int | None = None,
                 owner_token: str | None = None) -> None:
        self.state = State.from_spec(spec, owner_token)
        self.double = Double(self.state)
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._control: DoubleControl | None = None

    @property
    def owner_token(self) -> str:
        return self.state.owner_token

    def start(self) -> DoubleServer:
        config = uvicorn.Config(self.double.app, host="127.0.0.1", port=self.port,
                                log_level="warning", ws="websockets-sansio", lifespan="off",
                                ws_ping_interval=15, ws_ping_timeout=30)
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(target=server.run, daemon=True,
                                        name=f"spacetimedb-double-{self.port}")
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the SpacetimeDB double did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._server is not None:
            self._server.should_exit = True
            self._server.force_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def loop(self) -> asyncio.AbstractEventLoop | None:
        return getattr(self._server, "_loop", None)

    def control(self) -> DoubleControl:
        """The control client (one kept-alive connection while the double runs)."""
        if self._control is None:
            self._control = DoubleControl(self.base)
        return self._control

    def __enter__(self) -> DoubleServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class DoubleControl:
    """The double's control routes, for tests and scripts."""

    def __init__(self, base: str) -> None:
        self.base = base
        self._client = httpx.Client(base_url=base, timeout=10)

    def close(self) -> None:
        self._client.close()

    def _post(self, path: str, body: Any) -> Any:
        response = self._client.post(path, json=body)
        response.raise_for_status()
        return response.json()

    def tx(self, db: str, table: str, inserts: list[list[Any]] = (),  # type: ignore
           deletes: list[list[Any]] = (), **options: Any) -> int:  # type: ignore
        """Commit a transaction on `table`; returns how many subscribers got it.
        `raw_inserts=[text, …]` inserts rows sent as exactly that JSON text."""
        body = {"table": table, "inserts": list(inserts), "deletes": list(deletes), **options}
        return self._post(f"/_double/{db}/tx", body)["sent"]

    def faults(self, **faults: Any) -> None:
        self._post("/_double/faults", faults)

    def reset_faults(self) -> None:
        self._post("/_double/reset-faults", {})

    def drop(self) -> int:
        return self._post("/_double/drop", {})["dropped"]

    def state(self) -> dict[str, Any]:
        return self._client.get("/_double/state").json()
