"""The baseline: a Starlette endpoint that answers every hook with {"action":"accept"}."""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

BODY = b'{"action":"accept"}'


async def accept(request: Request) -> Response:
    await request.body()
    return Response(BODY, media_type="application/json")


app = Starlette(routes=[Route("/mta-hook", accept, methods=["POST"])])
