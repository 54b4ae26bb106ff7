"""App factory for worker processes started by `serve --workers N` (config from KOMM_*)."""

from __future__ import annotations

import os

from starlette.applications import Starlette

from ..config import load_config
from .app import create_app
from .service import HookService


def app_from_environment() -> Starlette:
    config = load_config()
    return create_app(HookService.from_config(config, worker=str(os.getpid())))
