"""Structured prediction logs: one JSON object per line, so every line parses on its own
and a log pipeline needs no regular expressions.

Each prediction is an `info` event; a prediction whose confidence is below the threshold
also gets a `warning` event of its own, so alerting can match on level and event name.
Non-finite numbers become null: JSON has no NaN, and a line that `json.loads` rejects in a
strict parser is a lost line.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from typing import Any, Protocol

PREDICTION, LOW_CONFIDENCE = "prediction", "low_confidence"


class TextSink(Protocol):
    def write(self, text: str, /) -> int: ...
    def flush(self) -> None: ...


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


class JsonFormatter(logging.Formatter):
    """A log record as one JSON line: time, level, logger, event and the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                + f".{int(record.msecs):03d}Z",
                "level": record.levelname.lower(), "logger": record.name, "event": record.getMessage(),
                **getattr(record, "fields", {})}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(_jsonable(line), allow_nan=False, separators=(",", ":"))


def json_logger(stream: TextSink, name: str = "mlsuite.predictions") -> logging.Logger:
    """A logger that writes JSON lines to `stream` only (it does not propagate to root)."""
    logger = logging.getLogger(name)
    logger.handlers.clear()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


class PredictionLog:
    def __init__(self, logger: logging.Logger, low_confidence: float = 0.5) -> None:
        if not 0 <= low_confidence <= 1:
            raise ValueError(f"low_confidence must be in [0, 1], got {low_confidence}")
        self.logger, self.low_confidence = logger, low_confidence

    def prediction(self, prediction_id: str, model_version: str, predicted_class: object, confidence: float,
                   latency_s: float, **extra: Any) -> None:
        fields = {"prediction_id": prediction_id, "model_version": model_version,
                  "predicted_class": predicted_class, "confidence": confidence, "latency_s": latency_s, **extra}
        self.logger.info(PREDICTION, extra={"fields": fields})
        if not confidence >= self.low_confidence:  # NaN confidence is low confidence too
            self.logger.warning(LOW_CONFIDENCE, extra={"fields": {**fields, "threshold": self.low_confidence}})
