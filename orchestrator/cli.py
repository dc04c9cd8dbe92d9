"""The ``orchestrator`` command: submit, worker, status, queues, setup.

Errors a user can cause (bad JSON, unknown stage, unreadable backend URL) exit 2 with one
clear line and no traceback.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import tempfile
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from orchestrator.backends import DEFAULT_BACKEND, Backend, open_backend
from orchestrator.base import is_default_dead_letter
from orchestrator.cli_args import (
    OneLineParser,
    UsageError,
    _json_arg,
    concurrency_arg,
    duration_arg,
    job_id_arg,
    limit_arg,
    path_arg,
    pipeline_from,
    port_arg,
    positive_seconds_arg,
    priority_arg,
    processes_arg,
    seconds_arg,
    since_arg,
    text_arg,
    time_arg,
    user_arg,
    wait_arg,
)
from orchestrator.controllers.faults import FaultPlan
from orchestrator.controllers.worker import DEFAULT_GRACE_S, Worker, settle_process
from orchestrator.errors import OrchestratorError
from orchestrator.logging import configure_logging, error_text
from orchestrator.ops import cli as ops_cli
from orchestrator.pipeline import Pipeline
from orchestrator.schedules import describe
from orchestrator.settings import load_settings
from orchestrator.status import JobRecord, JobStatus

# commands that only make sense on a backend another process can see
ONE_SHOT_COMMANDS = ("submit", "status", "cancel", "retry")
#: commands that act on jobs and queues that exist: they never create a database
EXISTING_ONLY_COMMANDS = ("status", "queues", "doctor", "schedules", "cancel", "retry", "purge", "web")


def job_json(rec: JobRecord) -> dict[str, Any]:
    doc = rec.model_dump(mode="json", exclude={"version"})
    doc["due_at"] = rec.due_at
    return doc


def read_payload(text: str) -> dict[str, Any]:
    """``--payload``: JSON, ``@FILE`` (a JSON file) or ``-`` (JSON on standard input)."""
    if text == "-":
        return _json_arg(sys.stdin.read(), "--payload - (standard input)")
    if text.startswith("@"):
        try:
            content = Path(text[1:]).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--payload {text}: cannot read {text[1:]}: {getattr(exc, 'strerror', None) or exc}"
                             ) from exc
        return _json_arg(content, f"--payload {text}")
    return _json_arg(text, "--payload")


def read_jobs(path: str) -> list[tuple[str, dict[str, Any], str | None]]:
    """``--jobs FILE.jsonl`` (``-``: standard input): one ``{"job_id", "payload", "user_id"?}``
    per line. Every line is checked before anything is submitted."""
    try:
        lines = sys.stdin.read().splitlines() if path == "-" else Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--jobs {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    jobs = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        doc = _json_arg(line, f"--jobs {path} line {n}")
        job_id, payload, user = doc.get("job_id"), doc.get("payload", {}), doc.get("user_id")
        if not isinstance(job_id, str) or not job_id.strip():
            raise UsageError(f"--jobs {path} line {n}: needs a non-empty string \"job_id\"")
        if not isinstance(payload, dict):
            raise UsageError(f"--jobs {path} line {n}: \"payload\" must be a JSON object")
        if user is not None and not isinstance(user, str):
            raise UsageError(f"--jobs {path} line {n}: \"user_id\" must be a string")
        try:
            jobs.append((job_id_arg(job_id), payload, None if user is None else user_arg(user)))
        except argparse.ArgumentTypeError as exc:
            raise UsageError(f"--jobs {path} line {n}: {exc}") from None
    return jobs


def check_target(pipeline: Pipeline, queue: str | None, topic: str | None) -> None:
    """Refuse a queue or topic the pipeline does not declare: a job sent there would wait
    PENDING forever with no stage to take it."""
    if queue is not None:
        known = sorted({st.source for st in pipeline.stages.values()})
        if queue not in known:
            raise UsageError(f"--queue {queue!r}: no stage of {pipeline.name!r} takes it (its queues: {', '.join(known)})")
    if topic is not None:
        known = sorted({t for st in pipeline.stages.values() for t in st.subscribe})
        if topic not in known:
            raise UsageError(f"--topic {topic!r}: no stage of {pipeline.name!r} subscribes to it"
                             + (f" (its topics: {', '.join(known)})" if known else " (it subscribes to none)"))


def cmd_submit(args: argparse.Namespace, backend: Backend) -> int:
    pipeline = pipeline_from(args)
    if not args.queue and not args.topic:
        raise UsageError("submit needs --queue or --topic")
    if args.queue and args.topic:
        raise UsageError("submit takes --queue or --topic, not both")
    if (args.job_id is None) == (args.jobs is None):
        raise UsageError("submit needs --job-id (one job) or --jobs FILE.jsonl (many)")
    check_target(pipeline, args.queue, args.topic)
    if args.delay is not None and args.at is not None:
        raise UsageError("submit takes --delay or --at, not both")
    timing: dict[str, Any] = {"delay_s": args.delay or 0.0, "at": args.at, "priority": args.priority}
    if args.jobs is not None:
        jobs = read_jobs(args.jobs)
        pipeline.setup(backend)

        # one transaction on the SQL backends: all or none
        created = pipeline.submit_many(backend, jobs, queue=args.queue, topic=args.topic, user_id=args.user,
                                       **timing)
        print(f"{created} submitted, {len(jobs) - created} already submitted")
        return 0
    payload = read_payload(args.payload)
    pipeline.setup(backend)
    rec, was_new = pipeline.submit(backend, job_id=args.job_id, payload=payload, queue=args.queue,
                                   topic=args.topic, user_id=args.user, **timing)
    due = f", due {when(rec.due_at)}" if rec.due_at is not None else ""
    print(f"{rec.job_id} {'submitted' if was_new else 'already submitted'} ({rec.status.value}{due})")
    return 0


def cmd_worker(args: argparse.Namespace, backend: Backend) -> int:
    pipeline = pipeline_from(args)
    if args.stage == "all" or args.processes > 1:
        return _supervise(args, pipeline, backend)
    stage = pipeline.get(args.stage)
    pipeline.setup(backend)
    middleware: list[Any] = []
    tracing = _tracing_from_env()
    if tracing is not None:
        middleware.append(tracing)
    if args.metrics_port is not None:
        from orchestrator.ops.metrics import PrometheusMiddleware

        metrics = PrometheusMiddleware()
        middleware.append(metrics)
    worker = Worker(pipeline, stage, backend, concurrency=args.concurrency, faults=FaultPlan.from_env(),
                    wait_s=args.wait, middleware=middleware, grace_s=args.grace)
    if args.metrics_port is not None:
        from orchestrator.ops.metrics import HealthServer, QueueDepthCollector, loop_alive

        metrics.registry.register(QueueDepthCollector(backend.transport, [stage.source, stage.dead_letter_queue]))
        try:
            server = HealthServer(args.metrics_port, metrics.registry, host=args.metrics_host,
                                  alive=loop_alive(lambda: worker.last_loop_at, 30 + 2 * worker.wait_s),
                                  ready=lambda: worker.ready and not worker.stopping)
        except OSError as exc:
            raise UsageError(f"--metrics-port {args.metrics_port} on {args.metrics_host}: "
                             f"{exc.strerror or exc}") from exc
        print(json.dumps({"metrics": f"http://{args.metrics_host}:{server.port}/metrics"}), file=sys.stderr)

    worker.stop_on_signals()
    if args.sweep_every:
        _start_sweeper(pipeline, backend, every_s=args.sweep_every, older_than_s=args.sweep_older_than,
                       stop=worker.stopping_event)
    # `make bench` readies its stage processes the same way.
    settle_process()
    worker.run(until_idle=args.until_idle)
    print(json.dumps({"stage": stage.name, **worker.stats}), file=sys.stderr)
    return 0


def cmd_web(args: argparse.Namespace, backend: Backend) -> int:
    try:
        from orchestrator.web import auth
    except ImportError as exc:
        raise UsageError(f"the dashboard needs the web extra ({exc.name} is missing): "
                         "pip install 'orchestrator[web]'") from None
    if args.pipeline == "passwd":
        if sys.stdin.isatty():
            password = getpass.getpass("password: ")
            if getpass.getpass("again: ") != password:
                raise UsageError("the two passwords differ")
        else:
            password = sys.stdin.readline().rstrip("\n")
        if len(password) < 8:
            raise UsageError("a password needs at least 8 characters")
        print(f"{auth.ENV[args.role]}='{auth.hash_password(password)}'")
        return 0
    hashes = auth.hashes_from_env()
    if not hashes:
        raise UsageError("no password set: run `orchestrator web passwd` and export the line it prints "
                         f"({auth.ENV['operator']}, or {auth.ENV['viewer']} for read-only)")
    pipeline = pipeline_from(args)
    from orchestrator.web.app import serve

    print(f"dashboard for {pipeline.name} on http://{args.host}:{args.port}/", file=sys.stderr)
    serve(pipeline, backend, hashes=hashes, host=args.host, port=args.port, secure_cookie=args.secure_cookie)
    return 0


def _tracing_from_env() -> Any:
    """The OpenTelemetry middleware when the OTEL_* environment asks for traces."""
    wants = any(os.environ.get(k) for k in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
                                            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    if not wants:
        return None
    try:
        from orchestrator.tracing import configure_from_env
    except ImportError as exc:
        raise UsageError(f"OTEL_* asks for traces, but OpenTelemetry is not installed ({exc.name}): "
                         "pip install 'orchestrator[otel]'") from None
    return configure_from_env()


def _supervise(args: argparse.Namespace, pipeline: Pipeline, backend: Backend) -> int:
    """``--stage all`` or ``--processes N``: a process per stage (N each), restarted when one
    dies; SIGTERM stops them all within the grace period."""
    from orchestrator.supervisor import Supervisor

    stages = list(pipeline.stages) if args.stage == "all" else [pipeline.get(args.stage).name]
    if args.metrics_port is not None:
        raise UsageError("--metrics-port serves one worker process; run stages one by one to give each a port")
    if backend.url.startswith("memory:"):
        raise UsageError("worker processes cannot share memory://; use sqlite:///PATH, postgresql:// or aws://")
    pipeline.setup(backend)
    common = ["--backend", backend.url, "--concurrency", str(args.concurrency), "--grace", str(args.grace)]
    for flag, value in (("--wait", args.wait), ("--log-level", args.log_level), ("--config", args.config),
                        ("--sweep-every", args.sweep_every)):
        if value is not None:
            common += [flag, str(value)]

    def argv_for(stage: str) -> list[str]:
        return [sys.executable, "-m", "orchestrator", "worker", args.pipeline, "--stage", stage, *common]

    sources = sorted({st.source for st in pipeline.stages.values()})

    def idle() -> bool:
        return all(backend.transport.depth(q).total == 0 for q in sources)

    sup = Supervisor(argv_for, stages, processes=args.processes, grace_s=args.grace,
                     idle=idle if args.until_idle else None)
    sup.install_signals()
    return sup.run()


def _start_sweeper(pipeline: Pipeline, backend: Backend, *, every_s: float, older_than_s: float,
                   stop: threading.Event) -> None:
    """Run the sweeper inside this worker every ``every_s`` seconds (level-triggered repair)."""
    from orchestrator.ops.sweep import sweep

    log = structlog.get_logger("orchestrator.sweeper")

    def loop() -> None:
        while not stop.wait(every_s):
            try:
                report = sweep(pipeline, backend, older_than_s=older_than_s)
                if report.actions:
                    log.warning("sweeper re-drove jobs", actions=report.actions[:20], count=len(report.actions))
            except Exception as exc:  # a failed sweep is retried at the next interval
                log.warning("sweep failed", error=error_text(exc))

    threading.Thread(target=loop, daemon=True, name="orchestrator-sweeper").start()


def cmd_setup(args: argparse.Namespace, backend: Backend) -> int:
    pipeline_from(args).setup(backend)
    print(f"set up {backend.url}")
    return 0


def when(at: float) -> str:
    """A timestamp people read: UTC, to the millisecond."""
    return datetime.fromtimestamp(at, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def cmd_status(args: argparse.Namespace, backend: Backend) -> int:
    store = backend.store
    if args.job_id:
        rec = store.get(args.job_id)
        # With --user only that user's jobs exist: another user's job is "no job", not its record.
        if rec is None or (args.user is not None and rec.user_id != args.user):
            raise UsageError(f"no job {args.job_id!r}" + (f" for user {args.user!r}" if args.user is not None else ""))
        recs = [rec]
    else:
        status = JobStatus(args.status) if args.status else None
        recs = [r for r in store.query(user_id=args.user, status=status)
                if (args.since is None or r.created_at >= args.since)
                and (args.stage is None or any(k == args.stage or k.startswith(f"{args.stage}#") for k in r.steps))]
    matched = len(recs)
    if not args.job_id and args.limit and matched > args.limit:
        recs = recs[-args.limit:]  # the latest, oldest first
    if args.json:
        if args.job_id:
            print(json.dumps(job_json(recs[0]), indent=2))
            return 0
        # streamed one job at a time: a million jobs need not be one string in memory
        sys.stdout.write("[")
        for n, r in enumerate(recs):
            sys.stdout.write(("," if n else "") + "\n" + json.dumps(job_json(r)))
        sys.stdout.write("\n]\n" if recs else "]\n")
        return 0
    print(f"{'JOB':<24} {'STATUS':<10} {'USER':<12} STEPS")
    now = backend.clock.now()
    for r in recs:
        steps = " ".join(f"{name}={s.state}" for name, s in r.steps.items())
        if r.status == JobStatus.PENDING and r.due_at is not None and r.due_at > now:
            steps = f"due {when(r.due_at)}" + (f" {steps}" if steps else "")
        print(f"{r.job_id:<24} {r.status.value:<10} {r.user_id or '-':<12} {steps}")
        if args.job_id:
            for h in r.history:
                reason = f" ({h.reason})" if h.reason else ""
                print(f"  {when(h.at)} {h.event:<12} {h.stage or '':<10} {h.to_status or ''}{reason}")
            for name, step in r.steps.items():
                if step.error is not None:  # the last failed attempt, in full
                    e = step.error
                    print(f"  step {name}: attempt {e.attempt} raised {e.type}: {e.message}")
                    print("    " + e.traceback.rstrip().replace("\n", "\n    "))
    counts: dict[str, int] = {}
    for r in recs:
        counts[r.status.value] = counts.get(r.status.value, 0) + 1
    print("total", len(recs), " ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    if matched > len(recs):
        print(f"(the latest {len(recs)} of {matched} jobs; --limit N shows more, --limit 0 all)")
    return 0


def cmd_cancel(args: argparse.Namespace, backend: Backend) -> int:
    if backend.store.get(args.job_id) is None:
        raise UsageError(f"no job {args.job_id!r}")
    rec = backend.store.cancel(args.job_id, reason=args.reason or f"cancelled by {_who()}")
    print(f"{rec.job_id} {rec.status.value}")
    return 0


def cmd_retry(args: argparse.Namespace, backend: Backend) -> int:
    from orchestrator.controllers.retry import retry

    pipeline = pipeline_from(args) if args.pipeline else None
    if backend.store.get(args.job_id) is None:
        raise UsageError(f"no job {args.job_id!r}")
    rec = retry(pipeline, backend, args.job_id, by=_who(), reason=args.reason)
    step = rec.history[-1].stage
    print(f"{rec.job_id} {rec.status.value}: stage {step} sent its input again")
    return 0


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in this environment (a container's uid)
        return f"uid {os.getuid()}"


def cmd_schedules(args: argparse.Namespace, backend: Backend) -> int:
    pipeline = pipeline_from(args)
    rows = describe(pipeline, backend)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"pipeline {pipeline.name} has no schedules")
        return 0
    print(f"{'SCHEDULE':<24} {'WHEN':<18} {'MISSED':<7} {'LAST':<25} NEXT")
    for r in rows:
        print(f"{r['name']:<24} {r['when']:<18} {r['missed']:<7} {r['last'] or '-':<25} {r['next']}")
    return 0


def cmd_queues(args: argparse.Namespace, backend: Backend) -> int:
    rows = []
    for q in backend.transport.queues():
        d = backend.transport.depth(q)
        rows.append({"queue": q, "visible": d.visible, "in_flight": d.in_flight, "delayed": d.delayed,
                     "dead_letter": is_default_dead_letter(q)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'QUEUE':<32} {'VISIBLE':>8} {'IN_FLIGHT':>10} {'DELAYED':>8}")
    for r in rows:
        label = f"{r['queue']} (dead letters)" if r["dead_letter"] else r["queue"]
        print(f"{label:<32} {r['visible']:>8} {r['in_flight']:>10} {r['delayed']:>8}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="orchestrator", description="Controller-pattern pipelines on message queues.")
    sub = p.add_subparsers(dest="command", required=True)
    _run_commands(sub)
    _look_commands(sub)
    _extensions(sub, backend_arg)
    return p


def backend_arg(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"])
    sp.add_argument("--backend", default=None, type=path_arg,
                    help=f"sqlite:///PATH, memory:// or aws://?region=R&prefix=P (default {DEFAULT_BACKEND})")
    sp.add_argument("--config", default=os.environ.get("ORCHESTRATOR_CONFIG"), type=path_arg,
                    help="TOML file of settings (see docs/reference.md); ORCHESTRATOR_* variables override it")


def _run_commands(sub: Any) -> None:
    """submit, worker, setup: what makes work and does it."""
    s = sub.add_parser("submit", help="create a job PENDING and enqueue its first message (idempotent)")
    s.add_argument("pipeline", metavar="MODULE:PIPELINE")
    backend_arg(s)
    s.add_argument("--queue", type=text_arg)
    s.add_argument("--topic", type=text_arg)
    s.add_argument("--job-id", type=job_id_arg)
    s.add_argument("--payload", default="{}", type=path_arg,
                   help="JSON object, @FILE.json, or - (read from standard input)")
    s.add_argument("--jobs", metavar="FILE.jsonl", type=path_arg,
                   help='many jobs, one {"job_id": ..., "payload": {...}, "user_id": ...} per line, in one '
                        "transaction on the SQL backends (- reads standard input)")
    s.add_argument("--user", type=user_arg)
    s.add_argument("--delay", type=duration_arg, metavar="DURATION",
                   help="hold the job's first message this long (90s, 15m, 2h, 1d...; any length)")
    s.add_argument("--at", type=time_arg, metavar="TIME",
                   help="hold it until this ISO 8601 time with its zone (2026-12-05T09:00:00Z)")
    s.add_argument("--priority", type=priority_arg, default=0,
                   help="0 (default, lowest) .. 9 (highest): higher priorities are received first")
    s.set_defaults(fn=cmd_submit)

    w = sub.add_parser("worker", help="run one stage's controller")
    w.add_argument("pipeline", metavar="MODULE:PIPELINE")
    backend_arg(w)
    w.add_argument("--stage", required=True, type=text_arg,
                   help="the stage to run, or all: a process per stage, restarted when one dies")
    w.add_argument("--processes", type=processes_arg, default=1,
                   help="worker processes per stage (supervised, like --stage all)")
    w.add_argument("--concurrency", type=concurrency_arg, default=1)
    w.add_argument("--until-idle", action="store_true", help="exit 0 once the source queue is empty and nothing is in flight")
    w.add_argument("--wait", type=wait_arg, default=None, help="long-poll wait in seconds (0..20)")
    w.add_argument("--metrics-port", type=port_arg, default=None,
                   help="serve /metrics (Prometheus), /healthz and /readyz on this port (0: any free port)")
    w.add_argument("--metrics-host", default="127.0.0.1", type=text_arg)
    w.add_argument("--grace", type=seconds_arg, default=DEFAULT_GRACE_S,
                   help="on SIGTERM, seconds to let running handlers finish before their messages are handed "
                        "back to the queue and the worker exits (default %(default)s)")
    w.add_argument("--sweep-every", type=positive_seconds_arg, default=None,
                   help="also run the sweeper every this many seconds (see `orchestrator sweep`)")
    w.add_argument("--sweep-older-than", type=seconds_arg, default=300.0,
                   help="the sweeper's --older-than, seconds (default %(default)s)")
    w.set_defaults(fn=cmd_worker)

    su = sub.add_parser("setup", help="create every queue, topic and subscription (idempotent)")
    su.add_argument("pipeline", metavar="MODULE:PIPELINE")
    backend_arg(su)
    su.set_defaults(fn=cmd_setup)


def _look_commands(sub: Any) -> None:
    """status, cancel, retry, schedules, queues, web: what looks at jobs and steers them."""
    st = sub.add_parser("status", help="show jobs")
    backend_arg(st)
    st.add_argument("job_id", nargs="?", type=job_id_arg)
    st.add_argument("--user", type=user_arg)
    st.add_argument("--status", choices=[s.value for s in JobStatus])
    st.add_argument("--stage", type=text_arg, help="only jobs with a step of this stage")
    st.add_argument("--since", type=since_arg, metavar="TIME",
                    help="only jobs created since this ISO 8601 time, or this long ago (2h, 7d)")
    st.add_argument("--limit", type=limit_arg, default=50, help="show the latest N (default 50; 0: all)")
    st.add_argument("--json", action="store_true")
    st.set_defaults(fn=cmd_status)

    ca = sub.add_parser("cancel", help="cancel a PENDING or RUNNING job (idempotent)")
    ca.add_argument("job_id", metavar="JOB", type=job_id_arg)
    backend_arg(ca)
    ca.add_argument("--reason", type=text_arg, help="kept in the job's history")
    ca.set_defaults(fn=cmd_cancel)

    rt = sub.add_parser("retry", help="send a FAILED job's failed stage its input again (back to PENDING)")
    rt.add_argument("job_id", metavar="JOB", type=job_id_arg)
    backend_arg(rt)
    rt.add_argument("--pipeline", metavar="MODULE:PIPELINE",
                    help="the job's pipeline, to find an input that was only kept in a dead-letter queue")
    rt.add_argument("--reason", type=text_arg, help="kept in the job's history")
    rt.set_defaults(fn=cmd_retry)

    sc = sub.add_parser("schedules", help="list the pipeline's schedules with their last and next firing")
    sc.add_argument("pipeline", metavar="MODULE:PIPELINE")
    backend_arg(sc)
    sc.add_argument("--json", action="store_true")
    sc.set_defaults(fn=cmd_schedules)

    qu = sub.add_parser("queues", help="show queue depths (visible, in flight, delayed, dead-lettered)")
    backend_arg(qu)
    qu.add_argument("--json", action="store_true")
    qu.set_defaults(fn=cmd_queues)
    we = sub.add_parser("web", help="the dashboard: stages, jobs, attempts, dead letters (web passwd: a password hash)")
    we.add_argument("pipeline", metavar="MODULE:PIPELINE", help="the pipeline to show, or passwd to hash a password")
    backend_arg(we)
    we.add_argument("--host", default="127.0.0.1", type=text_arg)
    we.add_argument("--port", type=port_arg, default=8080)
    we.add_argument("--secure-cookie", action="store_true", help="session cookie only over HTTPS (behind TLS)")
    we.add_argument("--role", choices=["operator", "viewer"], default="operator", help="with passwd: whose password")
    we.set_defaults(fn=cmd_web)


def _extensions(sub: Any, backend_arg: Any) -> None:
    """Commands that live in their own modules (operator toolkit)."""
    ops_cli.register(sub, backend_arg)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0), or a bad argument (2, its one line already printed)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        args.settings = load_settings(args.config)
        configure_logging(level=args.log_level or args.settings.log_level or "info")
        url = args.backend or args.settings.backend or DEFAULT_BACKEND
        if args.command == "chaos" and not args.backend:
            # chaos submits jobs and kills workers: never on the live database by default
            scratch = tempfile.mkdtemp(prefix="orchestrator-chaos-")
            url = f"sqlite:///{scratch}/chaos.db"
            print(f"orchestrator chaos: on a scratch database {url} (give --backend to use another)", file=sys.stderr)
        if url.startswith("memory:") and args.command in ONE_SHOT_COMMANDS:
            # the in-memory backend dies with this process: a job submitted here is gone at exit
            raise UsageError(f"{args.command} with {url} would act on a backend that vanishes when this command "
                             "exits; use sqlite:///PATH (or aws://) to share it with workers")
        if args.command == "web" and args.pipeline == "passwd":  # needs no backend
            return cmd_web(args, None)  # type: ignore[arg-type]
        # Commands on what exists never create a database: a mistyped path is an error, not a new file.
        existing = args.command in EXISTING_ONLY_COMMANDS or getattr(args, "dlq_command", None) in ("list", "show")
        backend = open_backend(url, create=not existing)
        try:
            return int(args.fn(args, backend))
        finally:
            backend.close()
    except (UsageError, OrchestratorError) as exc:
        print(f"orchestrator: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `orchestrator status | head`: the reader left; that is not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        why = environment_error(exc)
        if why is None:
            raise  # a bug: keep the traceback
        print(f"orchestrator: error: {why}", file=sys.stderr)
        return 2


def environment_error(exc: BaseException) -> str | None:
    """One line for what the environment did to us (disk full, read-only file, port in use, no
    AWS credentials, database gone), or None for anything else (a bug, with its traceback)."""
    module = type(exc).__module__.split(".")[0]
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if module == "sqlite3":
        return f"SQLite database: {first}"
    if module in ("botocore", "boto3"):
        return f"AWS: {first}"
    if module in ("psycopg", "psycopg_pool"):
        return f"PostgreSQL: {first}"
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        return f"{exc.strerror or first}{where}"
    return None


if __name__ == "__main__":
    sys.exit(main())
