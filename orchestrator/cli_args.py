"""The command line's argument types and its parser: every mistake is one line and exit 2.

Arguments arrive as text the user typed (or bytes that are not UTF-8, which Python hands over
as lone surrogates): each type checks what its option can hold before anything runs, so a
bad value is a one-line error, never a traceback from deep inside a store.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time
from datetime import datetime
from typing import Any, NoReturn

from orchestrator.base import MAX_PRIORITY
from orchestrator.controllers.worker import MAX_CONCURRENCY
from orchestrator.durations import parse_duration, parse_time
from orchestrator.pipeline import Pipeline
from orchestrator.settings import apply_settings
from orchestrator.storable import id_problem


class UsageError(Exception):
    """A mistake on the command line: exit 2 with the message."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, with its errors on one line (``orchestrator submit: error: ...``) and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def whole(text: str, *, low: int, high: int | None = None, out_of_range: str = "") -> int:
    """An integer from ``text`` within ``low``..``high`` (``high`` None: no top), else an
    ``ArgumentTypeError`` saying what was expected; ``out_of_range`` replaces the range message."""
    span = f" {low}..{high}" if high is not None else ""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number{span}, got {text!r}") from None
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(out_of_range.format(value=value) or (
            f"must be{span}, got {value}" if high is not None else f"must be at least {low}, got {value}"))
    return value


#: the largest count a command takes: what SQLite and PostgreSQL hold in an integer (a count
#: beyond it is passed to a query's LIMIT and would fail there, with a traceback)
MAX_COUNT = 2**63 - 1


def positive_int(text: str) -> int:
    """argparse type: an integer 1..MAX_COUNT (0 or -1 workers is a mistake, not a request for one)."""
    return whole(text, low=1, high=MAX_COUNT)


#: threads per worker process: beyond this, start more processes (each thread holds a batch)
#: the longest long poll a receive may wait (SQS's limit; the others follow it)
MAX_WAIT_S = 20.0


def concurrency_arg(text: str) -> int:
    """argparse type: threads per worker, 1..MAX_CONCURRENCY."""
    return whole(text, low=1, high=MAX_CONCURRENCY,
                 out_of_range=f"must be at least 1 and at most {MAX_CONCURRENCY} threads per process, got {{value}} "
                              "(run more worker processes instead)")


#: worker processes per stage under one supervisor
MAX_PROCESSES = 64


def processes_arg(text: str) -> int:
    """argparse type: worker processes per stage, 1..MAX_PROCESSES."""
    return whole(text, low=1, high=MAX_PROCESSES,
                 out_of_range=f"must be at least 1 and at most {MAX_PROCESSES} processes per stage, got {{value}}")


def wait_arg(text: str) -> float:
    """argparse type: a long-poll wait, 0..MAX_WAIT_S seconds."""
    value = seconds_arg(text)
    if value > MAX_WAIT_S:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_WAIT_S:.0f} seconds, got {text}")
    return value


def port_arg(text: str) -> int:
    """argparse type: a TCP port, 0 (any free one) .. 65535."""
    return whole(text, low=0, high=65535, out_of_range="must be a port number 0..65535, got {value}")


def seconds_arg(text: str) -> float:
    """argparse type: a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, got {text}")
    return value


def positive_seconds_arg(text: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    value = seconds_arg(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def duration_arg(text: str) -> float:
    """argparse type: a duration (``90s``, ``15m``, ``1h30m``, ``2d`` or seconds), >= 0."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def time_arg(text: str) -> datetime:
    """argparse type: an ISO 8601 time with its zone."""
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def priority_arg(text: str) -> int:
    """argparse type: a priority 0..9."""
    return whole(text, low=0, high=MAX_PRIORITY)


def limit_arg(text: str) -> int:
    """argparse type: a count 0..MAX_COUNT (0: no limit)."""
    return whole(text, low=0, high=MAX_COUNT,
                 out_of_range=f"must be 0 (no limit) up to {MAX_COUNT}, got {{value}}")


def since_arg(text: str) -> float:
    """argparse type: a moment, as an ISO 8601 time with its zone or a duration ago (``2h``):
    epoch seconds."""
    try:
        return parse_time(text).timestamp()
    except ValueError:
        pass
    try:
        return time.time() - parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 time (2026-12-05T09:00:00Z) or a duration "
                                         f"ago (2h, 7d), got {text!r}") from None


def job_id_arg(text: str) -> str:
    """argparse type: a job id every store can key on (``orchestrator.storable``): not blank,
    valid UTF-8 (argv bytes that are not arrive as lone surrogates), no NUL, <= 512 bytes."""
    if not text.strip():
        raise argparse.ArgumentTypeError("a job id cannot be empty")
    problem = id_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem.replace(repr(text), repr(_shown(text))))
    return text


def user_arg(text: str) -> str:
    """argparse type: a user id, by the job id's rules."""
    problem = id_problem(text, "user")
    if problem is not None:
        raise argparse.ArgumentTypeError(problem.replace(repr(text), repr(_shown(text))))
    return text


def text_arg(text: str) -> str:
    """argparse type: text a store or queue can hold (valid UTF-8, no NUL)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"{_shown(text)!r} is not valid UTF-8") from None
    if "\x00" in text:
        raise argparse.ArgumentTypeError("contains a NUL character")
    return text


def path_arg(text: str) -> str:
    """argparse type: a file name, or text holding one (no NUL: no file name can contain it;
    other bytes, even ones that are not UTF-8, can name a file)."""
    if "\x00" in text:
        raise argparse.ArgumentTypeError(f"{_shown(text)!r} contains a NUL character, which no file name can")
    return text


def _shown(text: str) -> str:
    """``text`` printable on any terminal: undecodable bytes as \\x escapes, cut to 80."""
    try:
        shown = text.encode(errors="surrogateescape").decode(errors="backslashreplace")
    except UnicodeEncodeError:  # a surrogate no byte stands for (from JSON, not argv)
        shown = text.encode(errors="backslashreplace").decode()
    return shown if len(shown) <= 80 else shown[:77] + "..."


def load_pipeline(spec: str) -> Pipeline:
    """Import ``MODULE:PIPELINE`` (the current directory is searched too)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UsageError(f"expected MODULE:PIPELINE, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import module {module_name!r}: {exc}") from exc
    pipeline = getattr(module, attr, None)
    if not isinstance(pipeline, Pipeline):
        raise UsageError(f"{spec!r} is not a Pipeline (found {type(pipeline).__name__})")
    return pipeline


def pipeline_from(args: argparse.Namespace) -> Pipeline:
    """The pipeline named on the command line, with settings from --config and the
    environment applied."""
    pipeline = load_pipeline(args.pipeline)
    apply_settings(pipeline, args.settings)
    return pipeline


def _json_arg(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:  # also an integer of over 4,300 digits, or deep nesting
        raise UsageError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value
