"""The Starlette app Stalwart calls: `POST /mta-hook`, plus health, readiness and metrics.

The hook path is: check the token, read the body up to the limit (413 beyond it, also
for chunked bodies; 503 when the bodies held at once would pass max_body_buffer_bytes,
`bodybudget`), decode tolerantly,
evaluate on the policy set current at that moment, answer, hand the decision to the log
queue.  Bad input gets a 4xx JSON body naming the problem; a policy or directory problem
gets the policy's fallback decision with status 200, never a 500.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..decision import Decision
from ..directory.schema import SCHEMA_FILE
from ..runtime import decide
from ..wire import Request, RequestError, decode_request
from . import response as wire_response
from .bodybudget import TOO_LARGE, BodyBudget, Reservation, over_budget, read_body
from .inline import inline as _inline
from .metrics import CONTENT_TYPE
from .ratelog import RateLimitedLog
from .response import Answer
from .service import DO_NOT_COMPILE, HookService
from .spooling import SpoolBatch

log = logging.getLogger("komm_policy.hook")

SWITCH_INTERVAL = 0.001
"""Seconds a thread holding the GIL runs before another may take it (Python: 0.005)."""

def token_matches(header: str | None, token: bytes) -> bool:
    """Bearer TOKEN, or Basic with TOKEN as the password; constant-time comparison."""
    if not header:
        return False
    scheme, _, value = header.strip().partition(" ")
    scheme = scheme.lower()
    value = value.strip()
    if scheme == "bearer":
        candidate = value.encode()
    elif scheme == "basic":
        try:
            decoded = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return False
        candidate = decoded.partition(b":")[2]
    else:
        return False
    return hmac.compare_digest(candidate, token)


def create_app(service: HookService) -> HookApp:
    """The ASGI app for one service instance."""
    return HookApp(service, _starlette_app(service))



_WWW_AUTHENTICATE = ((b"www-authenticate", b'Bearer realm="komm-policy"'),)


class HookApp:
    """ASGI entry point.  `POST /mta-hook` is served directly from the ASGI messages: it is
    the one route on every SMTP transaction's path, and skipping Starlette's routing,
    middleware and Request/Response objects there roughly halves the per-request
    overhead.  Everything else (health, metrics, errors, lifespan) is plain Starlette.

    The server's protocol (`server.GuardedProtocol`) goes one step further for a hook
    request whose body arrived whole with its header: it calls `respond_inline` from the
    parser's callback and writes the answer itself, without an ASGI task.  Both paths run
    the same checks in the same order (`_check`, `_respond`)."""

    def __init__(self, service: HookService, starlette: Starlette) -> None:
        self.service = service
        self.starlette = starlette
        self._token = service.token.encode() if service.token else None
        service.token_listeners.append(self._token_changed)
        self._blocking = getattr(service.directory, "blocking", True)
        self._status_auth = service.status_auth and self._token is not None
        self._auth_log = RateLimitedLog(log)
        # Backstops a request could trip each time: one traceback per 10 s, not per request.
        self._failure_log = RateLimitedLog(log)
        self.inline = not self._blocking
        """Whether `respond_inline` can answer (a directory that never blocks)."""
        batch = SpoolBatch(service)
        self.after_spool = batch.after_spool
        """Send an inline answer once its decision is spooled (`spooling.SpoolBatch`)."""
        self.commit_spooled = batch.commit
        self.body_budget = BodyBudget(service.max_body_buffer_bytes)
        """Bytes of bodies read the ASGI way held at once (`bodybudget`)."""
        service.metrics.body_bytes_held.set_function(lambda: self.body_budget.held)
        self._busy_log = RateLimitedLog(log)

    def _token_changed(self, token: str) -> None:
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope["path"] == "/mta-hook"
                and scope["method"] == "POST"):
            await self.hook(scope, receive, send)
        elif (self._status_auth and scope["type"] == "http"
              and scope["path"] in ("/metrics", "/readyz")):
            refusal = self._authorization_refusal(scope, scope["headers"])
            if refusal is not None:
                await _send(send, refusal)
                return
            await self.starlette(scope, receive, send)
        else:
            await self.starlette(scope, receive, send)

    def _authorization_refusal(self, scope: Scope, headers: list[tuple[bytes, bytes]]
                               ) -> Answer | None:
        """400 for duplicate Authorization headers, 401 for a missing or wrong token
        (when one is configured), else None."""
        found = [value for name, value in headers if name == b"authorization"]
        if len(found) > 1:
            return self._refuse(scope, 400, "duplicate Authorization header")
        authorization = found[0] if found else None
        if self._token is None or token_matches(
                authorization.decode("latin-1") if authorization else None, self._token):
            return None
        return self._refuse(scope, 401, "invalid token" if authorization else "missing token")

    def _refuse(self, scope: Scope, status: int, reason: str) -> Answer:
        self.service.metrics.rejected_requests.labels(str(status)).inc()
        client = scope.get("client")
        self._auth_log.warning(  # never the header's value: it may hold a token
            f"auth: {reason}", "refused %s %s from %s: %s", scope["method"], scope["path"],
            f"{client[0]}:{client[1]}" if client else "unknown client", reason)
        return _json_answer(status, {"error": reason},
                            _WWW_AUTHENTICATE if status == 401 else ())

    def _check(self, scope: Scope) -> Answer | None:
        """The checks before the body is read: Authorization (400/401) and a declared
        Content-Length over the limit (413)."""
        length = None
        authorizations = 0
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"authorization":
                authorizations += 1
        if authorizations > 1 or self._token is not None:
            refusal = self._authorization_refusal(scope, scope["headers"])
            if refusal is not None:
                return refusal
        if length is not None and length.isdigit() and int(length) > (
                self.service.max_body_bytes):
            return self._too_large()
        return None

    def respond_inline(self, scope: Scope, body: bytes) -> Answer | None:
        """The answer to `POST /mta-hook` with this complete body, decided now on the
        calling (event loop) thread; None when it must go the ASGI way instead (a body
        over `INLINE_BODY_BYTES` or with many addresses, or a directory that may block)."""
        if self._blocking or not _inline(body):
            return None
        refusal = self._check(scope)
        if refusal is not None:
            return refusal
        if len(body) > self.service.max_body_bytes:
            return self._too_large()
        started = time.perf_counter()
        return self._respond(self._answer(body), started, stage=True)

    async def hook(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = self._check(scope)
        if refusal is not None:
            await _send(send, refusal)
            return
        reservation = Reservation(self.body_budget)  # (`bodybudget`)
        try:
            body = await read_body(receive, scope["headers"], self.service.max_body_bytes,
                                   reservation)
            if body is None:
                return  # the client went away
            if isinstance(body, int):
                await _send(send, self._too_large() if body == TOO_LARGE
                            else self._over_budget())
                return
            started = time.perf_counter()
            if self._blocking or not _inline(body):
                # Off the event loop: lookups that block, and large bodies (or ones full
                # of addresses) whose decision would hold every other request up.
                outcome = await run_in_threadpool(self._answer, body)
            else:
                outcome = self._answer(body)
            await _send(send, self._respond(outcome, started))
        finally:
            reservation.release()

    def _respond(self, outcome: RequestError | tuple[Request, Decision | None, bytes],
                 started: float, *, stage: bool = False) -> Answer:
        """Spool the decision (before the answer leaves: a crash after it loses nothing),
        count it, and give the answer.  `stage`: only stage it (`DecisionLog.
        stage_decision`); the answer is marked `spooling` and waits for `after_spool`."""
        if isinstance(outcome, RequestError):
            self.service.metrics.rejected_requests.labels("400").inc()
            return _json_answer(400, {"error": outcome.message, "path": outcome.path})
        service = self.service
        request, decision, answer = outcome
        spooling = False
        if decision is not None:
            elapsed = time.perf_counter() - started
            decision_log = service.decision_log
            try:
                if decision_log is not None:
                    record = (decision_log.stage_decision if stage
                              else decision_log.submit_decision)
                    if record(request, decision, elapsed * 1000, time.time(),
                              shadow=service.shadow,
                              redact_client_ip=service.redact_client_ip):
                        spooling = stage
                    else:  # unrecordable, or on_spool_error = tempfail
                        answer = wire_response.INTERNAL_ERROR_BODY
                service.metrics.observe(decision, elapsed)
            except Exception:
                # Never an answer whose decision is not in the log: 451, Stalwart retries.
                self._failure_log.exception("record", "recording a %s decision failed",
                                            request.context.stage)
                answer = wire_response.INTERNAL_ERROR_BODY
        return Answer(200, answer, (), spooling)

    def _answer(self, body: bytes) -> RequestError | tuple[Request, Decision | None, bytes]:
        """Decode, decide on the policy set current now, encode: the request, the decision
        (None after an internal error) and the answer; or the RequestError for a 400."""
        service = self.service
        try:
            request = decode_request(body, service.max_message_headers)
        except RequestError as exc:
            return exc
        except Exception as exc:  # decode_request names its errors; this is a backstop
            self._failure_log.exception("decode", "decoding a hook request failed")
            return RequestError(f"unreadable request: {type(exc).__name__}")
        policy_set = service.policy_set  # this request finishes on this version
        try:
            decision = decide(policy_set, request, service.directory)
            return request, decision, wire_response.encode(decision, shadow=service.shadow)
        except Exception:  # decide() does not raise; this is the last line of defence
            self._failure_log.exception("decide", "internal error answering a %s hook",
                                        request.context.stage)
            service.metrics.rejected_requests.labels("internal").inc()
            return request, None, wire_response.INTERNAL_ERROR_BODY

    def _over_budget(self) -> Answer:
        answer = over_budget(self.body_budget)
        self.service.metrics.rejected_requests.labels("503").inc()
        self._busy_log.warning("body budget", "answered 503: %s", answer.body.decode())
        return answer

    def _too_large(self) -> Answer:
        self.service.metrics.rejected_requests.labels("413").inc()
        return _json_answer(413, {
            "error": f"request body exceeds {self.service.max_body_bytes} bytes"})


def _json_answer(status: int, body: dict[str, Any],
                 headers: tuple[tuple[bytes, bytes], ...] = ()) -> Answer:
    return Answer(status, json.dumps(body).encode(), headers)


async def _send(send: Send, answer: Answer) -> None:
    await send({"type": "http.response.start", "status": answer.status, "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(answer.body)).encode()), *answer.headers]})
    await send({"type": "http.response.body", "body": answer.body})


def _starlette_app(service: HookService) -> Starlette:
    """Health, readiness, metrics, JSON errors for everything else, and the lifespan."""
    metrics = service.metrics

    async def healthz(request: HttpRequest) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: HttpRequest) -> Response:
        ready, reason = service.ready
        body = {"status": "ok" if ready else "unavailable", "reason": reason,
                "policy_version": service.policy_set.version,
                "rules": service.policy_set.rule_count}
        if ready and service.reload_problem is not None:  # still serving the older set
            body.update(status="degraded", reason=service.reload_reason or DO_NOT_COMPILE,
                        diagnostic=service.reload_problem)
        notice = (service.decision_log.status().spool_corruption
                  if service.decision_log is not None else None)
        if ready and notice is not None:  # records lost to spool corruption, recently
            body.update(status="degraded", decision_log=notice)
            if body["reason"] == "ok":
                body["reason"] = notice
        return JSONResponse(body, status_code=200 if ready else 503)

    async def metrics_endpoint(request: HttpRequest) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    async def hook_methods(request: HttpRequest) -> Response:  # POST is served by HookApp
        raise HTTPException(405, headers={"Allow": "POST"})

    async def http_error(request: HttpRequest, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code,
                            headers=exc.headers)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Decisions on large bodies run in worker threads; the event loop waits for the GIL
        # at most this long instead of Python's 5 ms, so /healthz and small hooks answer
        # within a few ms beside them.
        sys.setswitchinterval(SWITCH_INTERVAL)
        tasks = []
        loop = asyncio.get_running_loop()
        reload_requested = asyncio.Event()
        if service.policies_path is not None:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signal.SIGHUP, reload_requested.set)
            tasks.append(asyncio.create_task(_reloader(service, reload_requested)))
            if service.watch:
                tasks.append(asyncio.create_task(_watch(service, reload_requested)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGHUP)
            await asyncio.gather(*tasks, return_exceptions=True)
            await run_in_threadpool(service.close)

    app = Starlette(
        routes=[
            Route("/mta-hook", hook_methods,
                  methods=["GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False  # `/mta-hook/`: 404 with JSON, not a bodiless 307
    return app


async def _reloader(service: HookService, requested: asyncio.Event) -> None:
    """Re-read the token and recompile when asked (SIGHUP, a file change), off the event
    loop; a set waiting for the directory is retried every `retry_after` seconds, and a
    replaced set a request still held is freed when it is no longer held."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(requested.wait(), service.retry_after)
        if requested.is_set():
            requested.clear()
            await run_in_threadpool(service.reload_token)
        elif service.waiting_set is None:  # only a replaced set to free
            await run_in_threadpool(service.free_retired)
            continue
        await run_in_threadpool(service.reload)


async def _watch(service: HookService, requested: asyncio.Event) -> None:
    """Ask for a reload when a policy or the schema file changes (watchfiles, debounced)."""
    from watchfiles import awatch

    assert service.policies_path is not None
    path = os.fspath(service.policies_path)

    def is_policy(change: object, changed: str) -> bool:
        # The schema file is part of the policy set: a new enum variant or an address
        # annotation takes effect like a rule change (and a broken one is reported).
        return changed.endswith(".policy") or os.path.basename(changed) == SCHEMA_FILE

    while True:
        try:
            async for _changes in awatch(path, debounce=200, step=50, watch_filter=is_policy):
                requested.set()
        except asyncio.CancelledError:
            raise
        except Exception:  # e.g. the directory went away: keep trying
            log.exception("watching %s for policy changes failed; retrying", path)
        await asyncio.sleep(5)
