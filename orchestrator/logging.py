"""structlog set-up: JSON lines when stderr is not a terminal, console output when it is."""

from __future__ import annotations

import logging
import sys
import traceback

import structlog

from orchestrator.storable import MAX_REASON_CHARS, described, storable_text

#: the most of an exception's traceback one log line carries (its head and its tail): a
#: handler's exception may hold megabytes, and a console renderer given the live exception
#: (rich's, which structlog uses when it is installed) spent minutes drawing 100 KB of one
MAX_LOGGED_TRACEBACK_CHARS = 8 * 1024


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time (tests and daemons swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(*, json: bool | None = None, level: str = "info") -> None:
    json = (not sys.stderr.isatty()) if json is None else json
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )


def exception_text(error: BaseException) -> str:
    """``error``'s traceback as a log line's ``exception`` field: text, bounded, storable. Log
    calls pass this, never the live exception (``exc_info``), so no renderer's time or output
    grows with what an exception says."""
    return storable_text("".join(traceback.format_exception(error)), MAX_LOGGED_TRACEBACK_CHARS)


def error_text(error: BaseException, limit: int = MAX_REASON_CHARS) -> str:
    """``error`` as a log line's ``error`` field: its type and message, bounded (head and tail)."""
    return storable_text(described(error), limit)
