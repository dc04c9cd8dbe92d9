"""python -m examples.gas setup|submit|upgrade|worker|status|demo"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from examples.gas import app
from examples.gas.config import settings_help
from orchestrator.errors import OrchestratorError
from orchestrator.logging import configure_logging


def _backend(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--backend", default=os.environ.get("GAS_BACKEND", app.DEFAULT_GAS_BACKEND),
                    help="sqlite:///PATH (default ./gas.db) or aws://?region=R&prefix=P")


def _job_commands(sub: Any) -> None:
    """Commands that make and run the service's work: setup, submit, upgrade, worker, status."""
    s = sub.add_parser("setup", help="create queues, topics, subscriptions, tables, buckets (idempotent)")
    _backend(s)
    s = sub.add_parser("submit", help="submit a VCF file for annotation; prints the job id")
    _backend(s)
    s.add_argument("file", type=Path)
    s.add_argument("--user", required=True)
    s.add_argument("--tier", choices=["free", "premium"])
    s.add_argument("--email")
    s = sub.add_parser("upgrade", help="make a user premium and restore their archived results")
    _backend(s)
    s.add_argument("--user", required=True)
    s = sub.add_parser("worker", help="run stage controllers")
    _backend(s)
    s.add_argument("--stage", required=True, choices=[*app.STAGES, "all"])
    s.add_argument("--processes", type=int, default=1)
    s.add_argument("--concurrency", type=int, default=1)
    s.add_argument("--until-idle", action="store_true")
    s.add_argument("--chain", action="store_true",
                   help="with --until-idle: stop only when every GAS queue is idle (--stage all implies it)")
    s.add_argument("--no-setup", action="store_true",
                   help="skip creating queues, topics and buckets (the parent of --stage all did it once)")
    s = sub.add_parser("status", help="show jobs")
    _backend(s)
    s.add_argument("job_id", nargs="?")
    s.add_argument("--user")
    s.add_argument("--json", action="store_true")


def _site_commands(sub: Any) -> None:
    """Commands around the deployment: web, migrate, user, demo."""
    s = sub.add_parser("web", help="the GAS web front end (sign in, upload, my annotations, operators' page)")
    _backend(s)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--dev", action="store_true",
                   help="sign in by choosing any name (the demo's mode; without it users have accounts with passwords)")
    s = sub.add_parser("migrate", help="list the other consumers of the GAS topics (the old scripts' queues, "
                                         "Lambdas) and what they would do twice; --apply unsubscribes them")
    _backend(s)
    how = s.add_mutually_exclusive_group()
    how.add_argument("--apply", action="store_true", help="unsubscribe them (recorded, for --undo)")
    how.add_argument("--undo", action="store_true", help="subscribe again those --apply took off")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("user", help="create a web account, or set its password (read from GAS_USER_PASSWORD or asked)")
    _backend(s)
    s.add_argument("name")
    s.add_argument("--email")
    s.add_argument("--tier", choices=["free", "premium"])
    s = sub.add_parser("demo", help="run the whole service on the embedded default with a worker killed mid-run")
    s.add_argument("--dir", type=Path, default=Path("gas-data"))
    s.add_argument("--retention", type=float, default=3.0, help="free-tier retention in seconds for the demo")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m examples.gas", description="Genomics Annotation Service",
                                 epilog=settings_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log-level", default=os.environ.get("GAS_LOG_LEVEL", "info"))
    sub = ap.add_subparsers(dest="cmd", required=True)
    _job_commands(sub)
    _site_commands(sub)
    args = ap.parse_args(argv)
    configure_logging(level=args.log_level)
    try:
        if args.cmd == "web":
            from examples.gas.web import serve

            return serve(args.backend, host=args.host, port=args.port, signin="dev" if args.dev else None)
        if args.cmd == "demo":
            from examples.gas.demo import run_demo

            return run_demo(args.dir, retention_s=args.retention)
        # a supervised worker (its parent ran setup) and a look at jobs make nothing
        gas = app.open_gas(args.backend, create=not (args.cmd == "status" or getattr(args, "no_setup", False)))
        try:
            return _run(args, gas)
        finally:
            gas.close()
    except OrchestratorError as exc:
        print(f"gas: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, gas: app.Gas) -> int:
    if args.cmd == "setup":
        app.setup(gas)
        print(f"GAS set up on {gas.backend.url}")
    elif args.cmd == "submit":
        app.setup(gas)
        print(app.submit(gas, args.file, user_id=args.user, tier=args.tier, email=args.email))
    elif args.cmd == "migrate":
        from dataclasses import asdict

        from examples.gas import migrate

        consumers = migrate.apply(gas) if args.apply else migrate.undo(gas) if args.undo else migrate.inspect(gas)
        if args.json:
            print(json.dumps([asdict(c) for c in consumers], indent=2))
        else:
            print(migrate.report(consumers, done="unsubscribe" if args.apply else "subscribe again" if args.undo
                                 else None))
    elif args.cmd == "user":
        password = os.environ.get("GAS_USER_PASSWORD")
        if password is None:
            import getpass

            password = getpass.getpass(f"password for {args.name}: ")
            if getpass.getpass("again: ") != password:
                raise app.GasError("the passwords differ")
        app.add_account(gas, args.name, password, email=args.email, tier=args.tier)
        print(f"{args.name} may sign in with that password (their earlier sessions have ended)")
    elif args.cmd == "upgrade":
        jobs = app.upgrade(gas, args.user)
        print(f"{args.user} is premium; restoring {len(jobs)} archived result(s)")
    elif args.cmd == "worker":
        if not args.no_setup:
            app.setup(gas)
        stages = list(gas.pipeline.stages) if args.stage == "all" else [args.stage]
        if len(stages) == 1 and args.processes == 1:
            stats = app.run_worker(gas, stages[0], until_idle=args.until_idle, concurrency=args.concurrency,
                                   chain=args.chain)
            print(json.dumps({"stage": stages[0], **stats}), file=sys.stderr)
            return 0
        return app.run_processes(args.backend, stages, args.processes, until_idle=args.until_idle,
                                 log_level=args.log_level)
    elif args.cmd == "status":
        if args.job_id:
            job = gas.backend.store.get(args.job_id)
            # With --user only that user's jobs exist (the web app shows users their own jobs).
            if job is None or (args.user is not None and job.user_id != args.user):
                raise app.GasError(f"no job {args.job_id}" + (f" for user {args.user}" if args.user is not None else ""))
            jobs = [job]
        else:
            jobs = gas.backend.store.query(user_id=args.user)
        if args.json:
            docs = [j.model_dump(mode="json", exclude={"version"}) for j in jobs]
            print(json.dumps(docs[0] if args.job_id else docs, indent=2))
        else:
            print(format_table([app.job_row(j, gas.config) for j in jobs]))
    return 0


def format_table(rows: list[dict[str, object]]) -> str:
    cols = ["job_id", "user_id", "tier", "file", "status", "variants", "emailed", "archived", "result_key"]
    head = f"{'JOB':<10} {'USER':<8} {'TIER':<8} {'FILE':<14} {'STATUS':<10} {'VARIANTS':>8} {'EMAIL':>5} {'ARCH':>5}  RESULT KEY"
    lines = [head]
    for r in rows:
        vals = {c: r.get(c) for c in cols}
        lines.append(
            f"{str(vals['job_id'])[:8]:<10} {vals['user_id']!s:<8} {vals['tier']!s:<8} {vals['file']!s:<14} "
            f"{vals['status']!s:<10} {vals['variants'] if vals['variants'] is not None else '-'!s:>8} "
            f"{'yes' if vals['emailed'] else 'no':>5} {'yes' if vals['archived'] else ('rest' if r.get('restored') else 'no'):>5}  {vals['result_key'] or r.get('reason') or '-'}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
