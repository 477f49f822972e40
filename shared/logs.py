"""Operator-readable logging for every speechq process; keeps funasr's chatter at WARNING."""

from __future__ import annotations

import logging
import os

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup(level: str | None = None) -> None:
    level = (level or os.environ.get("SPEECHQ_LOG_LEVEL", "INFO")).upper()
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format=FORMAT)
    quiet_third_parties()
    for name in ("api", "workers", "shared"):
        logging.getLogger(name).setLevel(level)


def quiet_third_parties() -> None:
    """funasr logs every loaded tensor at INFO on the root logger."""
    logging.getLogger().setLevel(logging.WARNING)
    for name in ("funasr", "modelscope", "jieba"):
        logging.getLogger(name).setLevel(logging.WARNING)
