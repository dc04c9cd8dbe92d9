"""CLI commands of the operator's toolkit: dlq, doctor, sweep, chaos."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from orchestrator.backends import Backend
from orchestrator.cli_args import (
    _json_arg,
    duration_arg,
    pipeline_from,
    positive_int,
    positive_seconds_arg,
    seconds_arg,
    text_arg,
)
from orchestrator.ops import dlq, doctor, purge, sweep
from orchestrator.ops.chaos import ChaosRun
from orchestrator.status import JobStatus


def cmd_dlq(args: argparse.Namespace, backend: Backend) -> int:
    from orchestrator.cli_args import UsageError

    if args.dlq_command == "list":
        rows = dlq.summary(backend)
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for r in rows:
                print(f"{r['queue']:<40} {r['messages']:>8}")
        return 0
    if args.dlq_command in ("show", "redrive"):
        named = getattr(args, "pipeline", None)
        dlq.check_dead_letter_queue(backend, pipeline_from(args) if named else None, args.queue)
    if args.dlq_command == "show":
        msgs = dlq.show(backend, args.queue, limit=args.limit, pipeline=pipeline_from(args) if named else None)
        if args.json:
            print(json.dumps(msgs, indent=2))
        else:
            for m in msgs:
                body = m["body"] if len(m["body"]) <= 200 else m["body"][:200] + "..."
                print(f"{m['message_id']}  from {m['source_queue']}\n  reason: {m['reason']}\n  body:   {body}")
                if m["error"]:
                    print("  raised: " + m["error"]["traceback"].rstrip().replace("\n", "\n          "))
        return 0
    if args.pipeline is None:
        raise UsageError("dlq redrive needs MODULE:PIPELINE")
    result = dlq.redrive(backend, pipeline_from(args), args.queue, limit=args.limit)
    print(f"redriven {len(result.redriven)}, refused {len(result.refused)}")
    for line in result.refused:
        print(f"  refused {line}")
    return 0


def cmd_doctor(args: argparse.Namespace, backend: Backend) -> int:

    pipeline = pipeline_from(args)
    findings = doctor.diagnose(pipeline, backend)
    settings = doctor.effective_settings(pipeline)
    if args.json:
        print(json.dumps({"settings": settings, "findings": [f.__dict__ for f in findings]}, indent=2, default=str))
    else:
        print(f"{'STAGE':<16} {'SETTING':<20} {'VALUE':<16} FROM")
        for row in settings:
            print(f"{row['stage']:<16} {row['setting']:<20} {row['value']!s:<16} {row['source']}")
        for f in findings:
            print(f)
        print(f"{sum(f.severity == 'error' for f in findings)} errors, {sum(f.severity == 'warning' for f in findings)} warnings")
    return 1 if any(f.severity == "error" for f in findings) else 0


def cmd_sweep(args: argparse.Namespace, backend: Backend) -> int:

    report = sweep.sweep(pipeline_from(args), backend, older_than_s=args.older_than, dry_run=args.dry_run)
    for action in report.actions:
        print(action)
    print(f"checked {report.checked} jobs, {len(report.actions)} actions{' (dry run)' if args.dry_run else ''}")
    return 0


def cmd_purge(args: argparse.Namespace, backend: Backend) -> int:

    statuses = [JobStatus(args.status)] if args.status else purge.TERMINAL
    report = purge.purge(pipeline_from(args), backend, older_than_s=args.older_than, statuses=statuses,
                         dry_run=args.dry_run)
    if args.dry_run:
        for job_id in report.jobs:
            print(job_id)
    print(f"{'would purge' if args.dry_run else 'purged'} {len(report.jobs)} jobs"
          + ("" if args.dry_run else f" and {report.dead_letters} dead letters"))
    return 0


def cmd_chaos(args: argparse.Namespace, backend: Backend) -> int:

    pipeline = pipeline_from(args)
    pipeline.setup(backend)
    run = ChaosRun(args.pipeline, pipeline, backend, args.backend or backend.url, seed=args.seed,
                   workers_per_stage=args.workers_per_stage, config=args.config)
    job_ids = run.submit(args.jobs, queue=args.queue, topic=args.topic, payload=_json_arg(args.payload, "--payload"))
    report = run.run(job_ids, kill_interval_s=args.kill_interval, duration_s=args.duration)
    print(report.to_json() if args.json else report.table())
    return 0 if report.ok else 1


def register(sub: Any, backend_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    d = sub.add_parser("dlq", help="dead-letter queues: list, show, redrive")
    dsub = d.add_subparsers(dest="dlq_command", required=True)
    dl = dsub.add_parser("list", help="dead-letter queues and their depth")
    backend_arg(dl)
    dl.add_argument("--json", action="store_true")
    ds = dsub.add_parser("show", help="messages of a dead-letter queue with their reasons")
    backend_arg(ds)
    ds.add_argument("queue", type=text_arg)
    ds.add_argument("--limit", type=positive_int, default=20)
    ds.add_argument("--json", action="store_true")
    dr = dsub.add_parser("redrive", help="send dead letters back to their source queue (jobs reset to PENDING)")
    dr.add_argument("pipeline", metavar="MODULE:PIPELINE", nargs="?")
    backend_arg(dr)
    dr.add_argument("queue", type=text_arg)
    dr.add_argument("--limit", type=positive_int, default=100)
    for p in (dl, ds, dr):
        p.set_defaults(fn=cmd_dlq)

    doc = sub.add_parser("doctor", help="check every stage's settings against the live backend")
    doc.add_argument("pipeline", metavar="MODULE:PIPELINE")
    backend_arg(doc)
    doc.add_argument("--json", action="store_true")
    doc.set_defaults(fn=cmd_doctor)

    sw = sub.add_parser("sweep", help="re-drive jobs whose messages went missing")
    sw.add_argument("pipeline", metavar="MODULE:PIPELINE")
    backend_arg(sw)
    sw.add_argument("--older-than", type=seconds_arg, default=sweep.DEFAULT_OLDER_THAN_S,
                    help="only jobs unchanged for this many seconds (default %(default)s)")
    sw.add_argument("--dry-run", action="store_true")
    sw.set_defaults(fn=cmd_sweep)

    pu = sub.add_parser("purge", help="remove finished jobs (COMPLETED, FAILED, CANCELLED) and their dead letters")
    pu.add_argument("pipeline", metavar="MODULE:PIPELINE")
    backend_arg(pu)
    pu.add_argument("--older-than", type=duration_arg, required=True, metavar="DURATION",
                    help="only jobs unchanged for this long (30d, 12h, 90m, seconds)")
    pu.add_argument("--status", choices=[s.value for s in purge.TERMINAL])
    pu.add_argument("--dry-run", action="store_true", help="list what would go; remove nothing")
    pu.set_defaults(fn=cmd_purge)

    ch = sub.add_parser("chaos", help="run every stage as processes, SIGKILL them at random, report")
    ch.add_argument("pipeline", metavar="MODULE:PIPELINE")
    backend_arg(ch)
    ch.add_argument("--jobs", type=positive_int, default=1000)
    ch.add_argument("--kill-interval", type=positive_seconds_arg, default=1.0, help="mean seconds between kills")
    ch.add_argument("--duration", type=seconds_arg, default=10.0, help="seconds of killing before the drain")
    ch.add_argument("--workers-per-stage", type=positive_int, default=2)
    ch.add_argument("--queue", type=text_arg, help="queue of the first message (default: the first stage's source)")
    ch.add_argument("--topic", type=text_arg, help="topic of the first message instead of a queue")
    ch.add_argument("--payload", default="{}", help="JSON payload of every job")
    ch.add_argument("--seed", type=int, default=None)
    ch.add_argument("--json", action="store_true")
    ch.set_defaults(fn=cmd_chaos)
