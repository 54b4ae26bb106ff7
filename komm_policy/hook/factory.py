"""App factory for worker processes started by `serve --workers N` (config from KOMM_*)."""

from __future__ import annotations

import logging
import os

from starlette.applications import Starlette

from ..config import load_config
from ..logsetup import configure_logging
from .app import create_app
from .service import HookService


def app_from_environment() -> Starlette:
    config = load_config()
    service = HookService.from_config(config, worker=str(os.getpid()), freeze_sets=True)
    configure_logging()  # uvicorn configures only its own loggers; level: KOMM_LOG_LEVEL
    logging.getLogger("komm_policy").info(
        "worker %d: policies version %s (%d rules)%s", os.getpid(),
        service.policy_set.version, service.policy_set.rule_count,
        ", shadow mode" if service.shadow else "")
    return create_app(service)
