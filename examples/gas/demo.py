"""The GAS demo: every sample file for a few users, all stages as processes, one annotate
worker SIGKILLed mid-run, a progress bar, and a final check that nothing was lost."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from examples.gas import app
from examples.gas.config import GasConfig
from examples.gas.samples import samples_dir

USERS = {  # user -> (tier, files)
    "alice": ("free", ["test.vcf", "free_1.vcf", "free_2.vcf"]),
    "bob": ("premium", ["test.vcf", "free_1.vcf", "free_2.vcf", "premium_1.vcf", "premium_3.vcf"]),
    "carol": ("free", ["free_1.vcf", "test.vcf"]),
    "dave": ("free", ["premium_3.vcf"]),  # refused: over the free tier's 150 KB
}


def _bar(done: int, total: int, width: int = 30) -> str:
    filled = int(width * done / total) if total else width
    return "[" + "#" * filled + "." * (width - filled) + "]"


def run_demo(root: Path, *, retention_s: float = 3.0, samples: Path | None = None) -> int:
    try:
        samples = samples or samples_dir()
    except FileNotFoundError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    url = f"sqlite:///{root.resolve()}/gas.db"
    env = {"GAS_RETENTION_S": str(retention_s), "GAS_VISIBILITY_TIMEOUT_S": "4", "GAS_RETRY_BASE_S": "0.5"}
    os.environ.update(env)
    gas = app.open_gas(url, config=GasConfig())
    app.setup(gas)
    print(f"GAS demo on {url}\n")
    jobs = _submit_samples(gas, samples)
    procs: dict[str, subprocess.Popen[bytes]] = {
        "annotate-1": app.spawn_worker(url, "annotate"), "annotate-2": app.spawn_worker(url, "annotate"),
        "notify": app.spawn_worker(url, "notify"), "archive": app.spawn_worker(url, "archive"),
        "restore": app.spawn_worker(url, "restore"),
    }
    print(f"\nstarted {len(procs)} worker processes: {', '.join(procs)}")
    started = time.time()
    _watch(gas, jobs, procs)
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs.values():
        p.wait()
    print(f"\n\nfinished in {time.time() - started:.1f}s\n")
    ok = _report(gas, jobs)
    print(f"\nSee these jobs in a browser (sign in as alice, bob or carol; admin sees /ops):\n"
          f"  .venv/bin/python -m examples.gas web --dev --backend {url}\n  then open http://127.0.0.1:8000/")
    gas.close()
    return 0 if ok else 1


def _submit_samples(gas: app.Gas, samples: Path) -> dict[str, tuple[str, str]]:
    """Each user's files, as the web app would submit them: job id -> (user, tier)."""
    jobs: dict[str, tuple[str, str]] = {}
    for user, (tier, files) in USERS.items():
        for name in files:
            try:
                job_id = app.submit(gas, samples / name, user_id=user, tier=tier, email=f"{user}@example.org")
                jobs[job_id] = (user, tier)
                print(f"  submitted {name:<14} for {user:<6} ({tier:<7}) -> job {job_id[:8]}")
            except app.GasError as exc:
                print(f"  refused   {name:<14} for {user:<6} ({tier:<7}): {exc}")
    return jobs


def _watch(gas: app.Gas, jobs: dict[str, tuple[str, str]], procs: dict[str, subprocess.Popen[bytes]]) -> None:
    """Draw progress until every job is done, emailed, and carol's archives restored: SIGKILL
    annotate-1 after the first completion, upgrade carol once every free result is archived."""
    total, killed, upgraded, last_line, started = len(jobs), False, False, "", time.time()
    free_jobs = {j for j, (_, tier) in jobs.items() if tier == "free"}
    carol_jobs = {j for j, (u, _) in jobs.items() if u == "carol"}
    a = gas.config.attr  # the deployment's attribute names
    while time.time() - started <= 300:
        recs = {j.job_id: j for j in gas.backend.store.query()}
        completed = [j for j in recs.values() if j.status.value == "COMPLETED"]
        emailed = [j for j in completed if "notified_time" in j.fields]
        archived = [j for j in recs.values() if j.job_id in free_jobs and
                    (j.fields.get(a("results_file_archive_id")) or a("restore_time") in j.fields)]
        restored = [j for j in recs.values() if a("restore_time") in j.fields]
        if not killed and len(completed) >= 1:
            procs["annotate-1"].send_signal(signal.SIGKILL)
            procs["annotate-1"].wait()
            killed = True
            sys.stdout.write(f"\n  SIGKILLed worker annotate-1 with {len(completed)}/{total} jobs done; "
                             "its leased messages return after the visibility timeout\n")
        if not upgraded and len(archived) == len(free_jobs):
            restore_ids = app.upgrade(gas, "carol")
            upgraded = True
            sys.stdout.write(f"\n  carol upgraded to premium: restoring {len(restore_ids)} archived results\n")
        line = (f"{_bar(len(completed), total)} {len(completed)}/{total} completed, {len(emailed)} emailed, "
                f"{len(archived)}/{len(free_jobs)} archived, {len(restored)} restored")
        if line != last_line:  # redraw in a terminal; one line per change in a log
            sys.stdout.write(f"\r  {line}   " if sys.stdout.isatty() else f"  {line}\n")
            sys.stdout.flush()
            last_line = line
        terminal = all(j.status.value in ("COMPLETED", "FAILED") for j in recs.values()) and len(recs) == total
        if terminal and len(emailed) == len(completed) and upgraded and carol_jobs <= {j.job_id for j in restored}:
            return
        time.sleep(0.2)
    print("\n  timed out waiting for the pipeline")


def _report(gas: app.Gas, jobs: dict[str, tuple[str, str]]) -> bool:
    """The jobs' table and the check: nothing lost, failed or committed twice, one email per
    job, no premium result archived."""
    from examples.gas.__main__ import format_table

    total = len(jobs)
    recs = {j.job_id: j for j in gas.backend.store.query()}
    print(format_table([app.job_row(r, gas.config) for r in recs.values()]))
    mails = gas.resources.mailer.sent()
    lost = [j for j in jobs if j not in recs or recs[j].status.value not in ("COMPLETED", "FAILED")]
    failed = [j for j in jobs if j in recs and recs[j].status.value == "FAILED"]
    twice = [j for j, r in recs.items() if any(r.commits(s) > 1 for s in app.STAGES)]
    premium_archived = [j for j, r in recs.items() if r.fields.get("user_tier") == "premium"
                        and jobs[j][0] != "carol" and "archive_time" in r.fields]
    print(f"\n{total} jobs: {total - len(lost) - len(failed)} completed, {len(failed)} failed, {len(lost)} lost, "
          f"{len(twice)} committed twice; {len(mails)} emails for {len(recs)} jobs; "
          f"premium results archived: {len(premium_archived)}")
    ok = not lost and not failed and not twice and len(mails) == total and not premium_archived
    print("OK: nothing lost, nothing done twice" if ok else "PROBLEM: see above")
    return ok
