"""The Starlette app Stalwart calls: `POST /mta-hook`, plus health, readiness and metrics.

The hook path is: check the token, read the body up to the limit, decode tolerantly,
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
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..runtime import decide
from ..wire import RequestError, decode_request
from . import response as wire_response
from .metrics import CONTENT_TYPE
from .service import HookService

log = logging.getLogger("komm_policy.hook")

_JSON = "application/json"


class BodyTooLarge(Exception):
    pass


async def read_body(request: HttpRequest, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes while reading."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit():
        if int(length) > limit:
            raise BodyTooLarge
        return await request.body()
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


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


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def create_app(service: HookService) -> Starlette:
    """The ASGI app for one service instance."""
    token = service.token.encode() if service.token else None
    metrics = service.metrics
    blocking_directory = getattr(service.directory, "blocking", True)

    async def mta_hook(request: HttpRequest) -> Response:
        if token is not None and not token_matches(request.headers.get("authorization"),
                                                   token):
            metrics.rejected_requests.labels("401").inc()
            return JSONResponse({"error": "missing or invalid token"}, status_code=401,
                                headers={"WWW-Authenticate": 'Bearer realm="komm-policy"'})
        try:
            body = await read_body(request, service.max_body_bytes)
        except BodyTooLarge:
            metrics.rejected_requests.labels("413").inc()
            return _error(413, f"request body exceeds {service.max_body_bytes} bytes")
        started = time.perf_counter()
        try:
            hook_request = decode_request(body)
        except RequestError as exc:
            metrics.rejected_requests.labels("400").inc()
            return _error(400, exc.message, path=exc.path)
        policy_set = service.policy_set  # this request finishes on this version
        try:
            if blocking_directory:
                decision = await run_in_threadpool(decide, policy_set, hook_request,
                                                   service.directory)
            else:
                decision = decide(policy_set, hook_request, service.directory)
            body_out = wire_response.encode(decision, shadow=service.shadow)
        except Exception:  # decide() does not raise; this is the last line of defence
            log.exception("internal error answering a %s hook", hook_request.context.stage)
            metrics.rejected_requests.labels("internal").inc()
            return Response(wire_response.INTERNAL_ERROR_BODY, media_type=_JSON)
        elapsed = time.perf_counter() - started
        if service.decision_log is not None:
            service.decision_log.submit_decision(
                hook_request, decision, elapsed * 1000, time.time(), shadow=service.shadow,
                redact_client_ip=service.redact_client_ip)
        metrics.observe(decision, elapsed)
        return Response(body_out, media_type=_JSON)

    async def healthz(request: HttpRequest) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: HttpRequest) -> Response:
        ready, reason = service.ready
        body = {"status": "ok" if ready else "unavailable", "reason": reason,
                "policy_version": service.policy_set.version,
                "rules": service.policy_set.rule_count}
        return JSONResponse(body, status_code=200 if ready else 503)

    async def metrics_endpoint(request: HttpRequest) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    async def http_error(request: HttpRequest, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code,
                            headers=exc.headers)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
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

    return Starlette(
        routes=[
            Route("/mta-hook", mta_hook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )


async def _reloader(service: HookService, requested: asyncio.Event) -> None:
    """Recompile whenever asked (SIGHUP or a file change), off the event loop."""
    while True:
        await requested.wait()
        requested.clear()
        await run_in_threadpool(service.reload)


async def _watch(service: HookService, requested: asyncio.Event) -> None:
    """Ask for a reload when a policy file changes (watchfiles, debounced)."""
    from watchfiles import awatch

    assert service.policies_path is not None
    path = os.fspath(service.policies_path)
    async for _changes in awatch(path, debounce=200, step=50):
        requested.set()
