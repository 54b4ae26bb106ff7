"""App factory for worker processes started by `serve --workers N` (config from KOMM_*)."""

from __future__ import annotations

import logging
import os

from starlette.applications import Starlette

from ..config import load_config
from .app import create_app
from .service import HookService


def app_from_environment() -> Starlette:
    config = load_config()
    service = HookService.from_config(config, worker=str(os.getpid()))
    if not logging.getLogger().handlers:  # uvicorn configures only its own loggers
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("komm_policy").info(
        "worker %d: policies version %s (%d rules)%s", os.getpid(),
        service.policy_set.version, service.policy_set.rule_count,
        ", shadow mode" if service.shadow else "")
    return create_app(service)
