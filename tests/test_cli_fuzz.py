"""The command line never shows a traceback: a property over every command's options and inputs.

Hypothesis builds command lines from every command and option, with values drawn from valid
ones and a catalogue of bad ones (bytes that are not UTF-8, as argv hands them over; numbers
out of range, negative or infinite; JSON nested 100,000 deep, in a file, on standard input and
in a ``--jobs`` line; ids of 5,000 characters; paths that do not exist). Whatever it builds, the
command ends with exit 0, 1 (a report that found problems) or 2, an error is one line, and no
traceback is printed. ``chaos`` is left out: it starts worker processes for seconds at a time.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from orchestrator.backends import open_backend
from orchestrator.cli import main

PIPELINE = """
from orchestrator import JobStatus, Pipeline, Result

pipeline = Pipeline("fuzz")

@pipeline.stage("first", source="in", emit_to="mid", max_receives=2, retry_base_s=0, retry_max_s=0)
def first(ctx, msg):
    if msg.payload.get("fail"):
        raise RuntimeError("no")
    return Result(status=JobStatus.RUNNING, emit=[{"ok": True}])

@pipeline.stage("second", source="mid")
def second(ctx, msg):
    return Result(status=JobStatus.COMPLETED)

pipeline.schedule("hourly", cron="0 * * * *", queue="in")
"""

DEEP = "[" * 100_000 + "]" * 100_000

BAD = [
    "", " ", "-1", "0", "1", "-0.5", "1e309", "nan", "inf", "-inf", "99999", "4294967296", "9" * 5000,
    "x" * 5000, "\udcff", "a\udcffb", "\udcc3\udca9", "\x7f", "é", "💥", "../../etc/passwd", "/", ".", "--",
    "{}", '{"a": 1}', "[", "[]", '"text"', "null", "@", "@/no/such/file.json", "@deep.json", "@notutf8.json", "-",
    "a:b", "fuzzpipe:nothing", "nosuch_module_xyz:pipeline", ":", "fuzzpipe:", "in", "mid", "in-dlq", "mid-dlq",
    "first", "second", "nowhere", "1h", "90s", "1h30m", "-5s", "2026-12-05T09:00:00Z", "2026-12-05T09:00:00",
    "1999-01-01T00:00:00Z", "PENDING", "COMPLETED", "done-1", "failed-1", "running-1", "jobs.jsonl", "deep.jsonl",
    "surrogate.jsonl", "big.jsonl", "\x00", "a\x00b", "@a\x00", "sqlite:///a\x00.db",
]
values = st.sampled_from(BAD) | st.text(max_size=12) | st.integers(-(2**70), 2**70).map(str)

#: command -> (positionals, options with a value, flags)
COMMANDS: dict[tuple[str, ...], tuple[list[str], list[str], list[str]]] = {
    ("submit",): (["pipeline"], ["--queue", "--topic", "--job-id", "--payload", "--jobs", "--user", "--delay",
                                 "--at", "--priority", "--log-level", "--config"], []),
    ("worker",): (["pipeline"], ["--stage", "--metrics-port", "--metrics-host", "--grace", "--sweep-every",
                                 "--sweep-older-than", "--log-level"], []),
    ("setup",): (["pipeline"], ["--log-level"], []),
    ("status",): (["job"], ["--user", "--status", "--log-level"], ["--json"]),
    ("cancel",): (["job"], ["--reason"], []),
    ("retry",): (["job"], ["--pipeline", "--reason"], []),
    ("schedules",): (["pipeline"], [], ["--json"]),
    ("queues",): ([], [], ["--json"]),
    ("dlq", "list"): ([], [], ["--json"]),
    ("dlq", "show"): (["queue"], ["--limit"], ["--json"]),
    ("dlq", "redrive"): (["pipeline", "queue"], ["--limit"], []),
    ("doctor",): (["pipeline"], [], ["--json"]),
    ("sweep",): (["pipeline"], ["--older-than"], ["--dry-run"]),
}
GOOD = {"pipeline": "fuzzpipe:pipeline", "job": "done-1", "queue": "in-dlq", "--stage": "first", "--queue": "in",
        "--job-id": "new-1", "--payload": "{}", "--wait": "0", "--concurrency": "1"}


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    command = draw(st.sampled_from(sorted(COMMANDS)))
    positionals, options, flags = COMMANDS[command]
    argv = list(command)
    for name in positionals:
        if draw(st.booleans()):  # sometimes left out: argparse's own error
            argv.append(draw(st.just(GOOD[name]) | values))
    for name in draw(st.lists(st.sampled_from(options), unique=True, max_size=4)) if options else []:
        argv += [name, draw(st.just(GOOD.get(name, "1")) | values)]
    argv += draw(st.lists(st.sampled_from(flags), unique=True)) if flags else []
    if command == ("worker",):
        # a worker that is given a valid wait or concurrency runs (until idle): those stay small
        argv += ["--until-idle", "--wait", draw(st.sampled_from(["0", "-1", "nan", "inf", "21", "x", "\udcff"])),
                 "--concurrency", draw(st.sampled_from(["1", "2", "0", "-1", "1025", "x", "99999", ""]))]
    if command == ("submit",) and "--job-id" not in argv and "--jobs" not in argv and draw(st.booleans()):
        argv += ["--job-id", draw(values)]
    if draw(st.integers(0, 9)) > 0:  # mostly our database; sometimes a typo or another scheme
        argv += ["--backend", "sqlite:///fuzz.db"]
    else:
        argv += ["--backend", draw(st.sampled_from(["sqlite:///typo.db", "memory://", "bogus://x", "sqlite://",
                                                    "sqlite:///", "sqlite:////no/such/dir/x.db"]) | values)]
    return argv


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A pipeline module, input files good and bad, and a database with jobs in every state."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "fuzzpipe.py").write_text(PIPELINE)
    (root / "deep.json").write_text(DEEP)
    (root / "notutf8.json").write_bytes(b'{"a": "\xff"}')
    (root / "jobs.jsonl").write_text('{"job_id": "bulk-1", "payload": {}}\n{"job_id": "bulk-2"}\n')
    (root / "deep.jsonl").write_text('{"job_id": "d", "payload": ' + "[" * 5000 + "]" * 5000 + "}\n")
    (root / "surrogate.jsonl").write_text('{"job_id": "s", "user_id": "\\ud800"}\n')
    (root / "big.jsonl").write_text('{"job_id": "b", "payload": {"n": ' + "9" * 30 + "}}\n")
    before, path = os.getcwd(), list(sys.path)
    os.chdir(root)
    sys.path.insert(0, str(root))
    try:
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            assert main(["setup", "fuzzpipe:pipeline", "--backend", "sqlite:///fuzz.db"]) == 0
            for job, payload in (("done-1", "{}"), ("failed-1", '{"fail": true}')):
                assert main(["submit", "fuzzpipe:pipeline", "--queue", "in", "--job-id", job, "--payload", payload,
                             "--backend", "sqlite:///fuzz.db"]) == 0
            for stage in ("first", "second"):
                assert main(["worker", "fuzzpipe:pipeline", "--stage", stage, "--until-idle", "--wait", "0",
                             "--backend", "sqlite:///fuzz.db"]) == 0
            assert main(["submit", "fuzzpipe:pipeline", "--queue", "in", "--job-id", "running-1",
                         "--backend", "sqlite:///fuzz.db"]) == 0
        backend = open_backend("sqlite:///fuzz.db")
        states = {r.job_id: r.status.value for r in backend.store.query()}
        backend.close()
        assert states["done-1"] == "COMPLETED" and states["failed-1"] == "FAILED", states
        yield root
    finally:
        os.chdir(before)
        sys.path[:] = path


def run(argv: list[str], stdin: str = DEEP) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    old_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse: --help, or a bad option
                code = int(exc.code or 0)
    finally:
        sys.stdin = old_stdin
    return code, err.getvalue()


@settings(max_examples=400)
@given(argv=command_lines())
# a count beyond a 64-bit integer reached the SQLite query's LIMIT (found by this property)
@example(argv=["dlq", "show", "in-dlq", "--limit", "9223372036854775808", "--backend", "sqlite:///fuzz.db"])
@example(argv=["status", "--limit", "9223372036854775808", "--backend", "sqlite:///fuzz.db"])
# a NUL in a file name raised ValueError where the file was opened (found by this property)
@example(argv=["submit", "fuzzpipe:pipeline", "--config", "\x00", "--backend", "sqlite:///fuzz.db"])
def test_no_command_line_shows_a_traceback(project: Path, argv: list[str]) -> None:
    code, err = run(argv)
    assert "Traceback" not in err, err
    assert code in (0, 1, 2), (code, err)
    if code == 2:
        errors = [line for line in err.splitlines() if "error:" in line]
        assert len(errors) == 1 and errors[0].startswith("orchestrator"), err
        assert "usage:" not in err  # the error alone, on one line


@pytest.mark.parametrize("argv", [
    ["submit", "fuzzpipe:pipeline", "--queue", "in", "--job-id", "j", "--payload", "@deep.json"],
    ["submit", "fuzzpipe:pipeline", "--queue", "in", "--job-id", "j", "--payload", "-"],
    ["submit", "fuzzpipe:pipeline", "--queue", "in", "--jobs", "deep.jsonl"],
    ["submit", "fuzzpipe:pipeline", "--queue", "in", "--job-id", "j", "--user", "\udcff"],
    ["submit", "fuzzpipe:pipeline", "--queue", "in", "--jobs", "surrogate.jsonl"],
    ["submit", "fuzzpipe:pipeline", "--queue", "in", "--jobs", "big.jsonl"],
    ["submit", "fuzzpipe:pipeline", "--queue", "in", "--job-id", "j" * 600],
    ["worker", "fuzzpipe:pipeline", "--stage", "first", "--metrics-port", "99999"],
    ["worker", "fuzzpipe:pipeline", "--stage", "first", "--grace", "-1"],
    ["worker", "fuzzpipe:pipeline", "--stage", "first", "--wait", "-1"],
    ["worker", "fuzzpipe:pipeline", "--stage", "first", "--wait", "1e300"],
    ["worker", "fuzzpipe:pipeline", "--stage", "first", "--concurrency", "100000"],
    ["status", "\udcff"],
    ["cancel", "running-1", "--reason", "\udcff"],
    ["dlq", "show", "in-dlq", "--limit", "-3"],
])
def test_the_reported_breaks_are_one_line_and_exit_2(project: Path, argv: list[str]) -> None:
    code, err = run([*argv, "--backend", "sqlite:///fuzz.db"])
    assert code == 2 and "Traceback" not in err, err
    assert len([line for line in err.splitlines() if line.strip()]) == 1, err
