"""``orchestrator chaos``: real worker processes, SIGKILLed at random, and a report.

Every stage gets its own worker processes; jobs are submitted; random workers are killed
with SIGKILL and restarted for ``duration_s``; then workers drain the queues and the report
counts what matters: lost jobs and steps committed twice must both be 0.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from orchestrator import records
from orchestrator.backends import Backend
from orchestrator.pipeline import Pipeline
from orchestrator.status import JobRecord

DRAIN_ROUNDS = 5


@dataclass
class ChaosReport:
    submitted: int = 0
    completed: int = 0
    failed: int = 0
    lost: int = 0
    committed_twice: int = 0
    stuck: int = 0
    redeliveries: int = 0
    kills: int = 0
    p50_latency_s: float = 0.0
    p99_latency_s: float = 0.0
    duration_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.committed_twice == 0 and self.stuck == 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def table(self) -> str:
        rows = [(k, v) for k, v in asdict(self).items() if k != "problems"]
        text = "\n".join(f"{k:<16} {v}" for k, v in rows)
        if self.problems:
            text += "\nproblems:\n" + "\n".join(f"  {p}" for p in self.problems[:20])
        return text


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def _latency(job: JobRecord) -> float | None:
    end = next((h.at for h in job.history if h.to_status is not None and h.to_status.terminal), None)
    return end - job.created_at if end is not None else None


def report_for(pipeline: Pipeline, backend: Backend, job_ids: list[str], *, kills: int, duration_s: float) -> ChaosReport:
    rep = ChaosReport(submitted=len(job_ids), kills=kills, duration_s=round(duration_s, 2))
    pending_messages = sum(backend.transport.depth(st.source).total for st in pipeline.stages.values())
    jobs = records.get_many(backend.store, job_ids)
    latencies = []
    for job_id in job_ids:
        job = jobs.get(job_id)
        if job is None:
            rep.lost += 1
            rep.problems.append(f"{job_id}: missing from the status store")
            continue
        if job.status.value == "COMPLETED":
            rep.completed += 1
        elif job.status.value == "FAILED":
            rep.failed += 1
        elif pending_messages:
            rep.stuck += 1
            rep.problems.append(f"{job_id}: {job.status.value} with messages still queued")
        else:
            rep.lost += 1
            rep.problems.append(f"{job_id}: {job.status.value} and no message left anywhere")
        for stage, step in job.steps.items():
            if job.commits(stage) > 1:
                rep.committed_twice += 1
                rep.problems.append(f"{job_id}/{stage}: committed {job.commits(stage)} times")
            rep.redeliveries += max(0, step.attempt - 1)
        lat = _latency(job)
        if lat is not None:
            latencies.append(lat)
    rep.p50_latency_s = _percentile(latencies, 0.50)
    rep.p99_latency_s = _percentile(latencies, 0.99)
    return rep


class ChaosRun:
    def __init__(self, spec: str, pipeline: Pipeline, backend: Backend, url: str, *, workers_per_stage: int = 2,
                 seed: int | None = None, extra_env: dict[str, str] | None = None, config: str | None = None) -> None:
        self.spec, self.pipeline, self.backend, self.url = spec, pipeline, backend, url
        self.workers_per_stage = workers_per_stage
        self.rng = random.Random(seed)
        self.env = dict(os.environ, **(extra_env or {}))
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), self.env.get("PYTHONPATH")]))
        self.config = config
        self.kills = 0

    def spawn(self, stage: str, *, until_idle: bool = False) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "orchestrator", "worker", self.spec, "--backend", self.url, "--stage", stage,
               "--log-level", "error", "--wait", "0.2"]
        if self.config:
            cmd += ["--config", self.config]
        if until_idle:
            cmd.append("--until-idle")
        return subprocess.Popen(cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def submit(self, n: int, *, queue: str | None, topic: str | None, payload: dict[str, Any]) -> list[str]:
        run = uuid.uuid4().hex[:6]
        if queue is None and topic is None:
            queue = next(iter(self.pipeline.stages.values())).source
        ids = [f"chaos-{run}-{i:05d}" for i in range(n)]
        for job_id in ids:
            self.pipeline.submit(self.backend, job_id=job_id, payload=dict(payload), queue=queue, topic=topic)
        return ids

    def run(self, job_ids: list[str], *, kill_interval_s: float, duration_s: float,
            drain_timeout_s: float = 600.0) -> ChaosReport:
        started = time.monotonic()
        stages = [name for name in self.pipeline.stages for _ in range(self.workers_per_stage)]
        procs = [self.spawn(s) for s in stages]
        deadline = started + duration_s
        try:
            while time.monotonic() < deadline:
                time.sleep(min(max(0.0, deadline - time.monotonic()), self.rng.expovariate(1 / kill_interval_s)))
                if time.monotonic() >= deadline:
                    break
                i = self.rng.randrange(len(procs))
                procs[i].send_signal(signal.SIGKILL)
                procs[i].wait()
                self.kills += 1
                procs[i] = self.spawn(stages[i])
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
        self.drain(job_ids, timeout_s=drain_timeout_s)
        return report_for(self.pipeline, self.backend, job_ids, kills=self.kills,
                          duration_s=time.monotonic() - started)

    def drain(self, job_ids: list[str], *, timeout_s: float) -> None:
        """Run --until-idle workers for every stage until the jobs are terminal (or rounds
        run out): a later stage may find its queue empty before an earlier one emits."""
        end = time.monotonic() + timeout_s
        for _ in range(DRAIN_ROUNDS):
            finishers = [self.spawn(s, until_idle=True) for s in self.pipeline.stages]
            for p in finishers:
                try:
                    p.wait(timeout=max(1.0, end - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.kill()
            jobs = records.get_many(self.backend.store, job_ids)
            if all(j.status.terminal for j in jobs.values()) and len(jobs) == len(job_ids):
                return
            if time.monotonic() > end:
                return
