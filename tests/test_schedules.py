"""Periodic schedules: exactly one job per tick, whoever fires it and whenever they crash."""

from __future__ import annotations

import os
import random
import runpy
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator import ConfigError, JobStatus, Pipeline, Result
from orchestrator.backends import Backend, memory_backend, open_backend
from orchestrator.clock import SimClock
from orchestrator.controllers.worker import Worker
from orchestrator.schedules import Schedule, Scheduler, due_ticks, tick_text


def every_minute(missed: str = "skip", **kw: object) -> Pipeline:
    p = Pipeline("sched")
    p.stage("report", source="reports")(lambda ctx, msg: Result(status=JobStatus.COMPLETED))
    p.schedule("minutely", every=60, queue="reports", payload={"kind": "summary"}, missed=missed, **kw)  # type: ignore[arg-type]
    return p


def jobs_of(backend: Backend) -> list[str]:
    return sorted(r.job_id for r in backend.store.query())


def test_interval_ticks_fall_on_whole_multiples_and_ids_name_the_tick() -> None:
    s = Schedule("r", queue="q", every_s=60)
    assert s.previous(3600 + 59.9) == 3600
    assert s.next(3600) == 3660
    assert s.ticks_back(3600 + 130, 3) == [3720, 3660, 3600]
    assert s.job_id(3600) == "r@1970-01-01T01:00:00.000Z"


def test_cron_ticks_follow_the_time_zone_across_a_daylight_saving_change() -> None:
    # 02:00 Berlin is 01:00 UTC in winter and 00:00 UTC in summer (clocks went forward on 29 March 2026)
    s = Schedule("nightly", queue="q", cron="0 2 * * *", timezone="Europe/Berlin")
    before = datetime(2026, 3, 28, 12, tzinfo=UTC).timestamp()
    assert tick_text(s.next(before)) == "2026-03-29T01:00:00.000Z"  # 02:00 does not exist that night: 03:00 CEST
    assert tick_text(s.next(s.next(before))) == "2026-03-30T00:00:00.000Z"
    assert tick_text(s.previous(before)) == "2026-03-28T01:00:00.000Z"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"cron": "61 * * * *"}, "not a cron expression"),
    ({"cron": "0 2 * * *", "every": 60}, "exactly one"),
    ({}, "exactly one"),
    ({"every": -5}, "positive interval"),
    ({"every": 60, "timezone": "Mars/Olympus"}, "unknown time zone"),
    ({"every": 60, "missed": "some"}, "missed must be one of"),
    ({"every": 60, "queue": "nowhere"}, "no stage takes queue 'nowhere'"),
])
def test_a_schedule_that_cannot_fire_is_refused_with_the_reason(kwargs: dict[str, object], message: str) -> None:
    p = Pipeline("sched")
    p.stage("report", source="reports")(lambda ctx, msg: Result())
    with pytest.raises(ConfigError, match=message):
        p.schedule("s", **{"queue": "reports", **kwargs})  # type: ignore[arg-type]
        p.validate(memory_backend(SimClock()))


@settings(max_examples=200)
@given(fired=st.sets(st.integers(0, 30)), now_offset=st.floats(0, 59.99), missed=st.sampled_from(["skip", "latest", "all"]))
def test_due_ticks_are_exactly_the_unfired_ones_after_the_last_fired_per_policy(
        fired: set[int], now_offset: float, missed: str) -> None:
    # Given a minutely schedule whose ticks 0..30 minutes ago are fired or not
    s = Schedule("r", queue="q", every_s=60, missed=missed, max_catch_up=31)  # type: ignore[arg-type]
    now = 1_000_000 * 60 + now_offset
    ago = {s.previous(now) - 60 * k: k for k in range(31)}
    exists = {s.job_id(t) for t, k in ago.items() if k in fired}
    # When
    due = due_ticks(s, now, lambda ids: exists & set(ids))
    # Then nothing fired is fired again, ticks come oldest first, none newer than now
    assert not {s.job_id(t) for t in due} & exists
    assert due == sorted(due) and all(t <= now for t in due)
    late = [ago[t] for t in due]
    if not fired:  # never fired in the window: only what is on time
        assert late == [0]  # the tick due now (within its period)
        return
    newest = min(fired)
    unfired = list(range(newest - 1, -1, -1))  # the ticks after the newest fired one, oldest first
    expected = {"all": unfired, "latest": unfired[-1:], "skip": [k for k in unfired if k == 0]}[missed]
    assert late == expected


def test_many_schedulers_firing_in_any_order_make_one_job_per_tick() -> None:
    # Given three workers' schedulers on one backend and an hour of minutely ticks
    clock = SimClock(start=600_000.0)
    backend = memory_backend(clock)
    p = every_minute(missed="all")
    p.setup(backend)
    schedulers = [Scheduler(p, backend) for _ in range(3)]
    rng = random.Random(7)
    # When they fire at random moments while time passes
    for _ in range(600):
        rng.choice(schedulers).fire_due()
        clock.advance(rng.uniform(0, 12))
    # Then every tick from the first has exactly one job, whatever the order
    ticks = [int(j.split("@")[1][11:16].replace(":", "")) for j in jobs_of(backend)]
    assert len(ticks) == len(set(ticks))
    first, last = Schedule("x", queue="q", every_s=60).previous(600_000.0), clock.now()
    assert len(ticks) == int((last - first) // 60) + 1


@pytest.mark.parametrize(("missed", "fired_after_outage"), [("skip", 0), ("latest", 1), ("all", 10)])
def test_ticks_missed_while_every_worker_was_down_follow_the_missed_policy(missed: str, fired_after_outage: int
                                                                           ) -> None:
    clock = SimClock(start=600_000.0)
    backend = memory_backend(clock)
    p = every_minute(missed=missed, grace_s=5)
    p.setup(backend)
    Scheduler(p, backend).fire_due()
    assert len(jobs_of(backend)) == 1
    # When every worker is down for ten ticks and one comes back 30 s after the tenth
    clock.advance(10 * 60 + 30)
    Scheduler(p, backend).fire_due()
    # Then
    assert len(jobs_of(backend)) == 1 + fired_after_outage


def test_a_fired_tick_runs_as_a_job_through_its_stage(backend: Backend) -> None:
    from helpers import drain

    p = every_minute()
    p.setup(backend)
    firings = Scheduler(p, backend).fire_due()
    assert len(firings) == 1 and firings[0].created
    drain(backend, p, "report")
    job = backend.store.get(firings[0].job_id)
    assert job is not None and job.status == JobStatus.COMPLETED
    assert job.fields["schedule"] == "minutely"
    # a second firing of the same tick creates nothing
    assert Scheduler(p, backend).fire_due() == [] or not Scheduler(p, backend).fire_due()[0].created


SCHED_PIPELINE = textwrap.dedent(
    """
    from orchestrator import Pipeline, Result, JobStatus

    pipeline = Pipeline("ticks")

    @pipeline.stage("tick", source="ticks", visibility_timeout_s=2, max_receives=20, wait_s=0.05)
    def tick(ctx, msg):
        return Result(status=JobStatus.COMPLETED)

    pipeline.schedule("every-second", every=1, queue="ticks", missed="all")
    """
)


@pytest.mark.slow
def test_three_worker_processes_killed_at_random_fire_each_tick_once(tmp_path: Path) -> None:
    # Given three worker processes of a pipeline with a one-second schedule
    (tmp_path / "tickpipe.py").write_text(SCHED_PIPELINE)
    db = f"sqlite:///{tmp_path / 'ticks.db'}"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.getcwd()}"}

    def spawn() -> subprocess.Popen[bytes]:
        # (a grace well inside the 30 s each is given to exit after SIGTERM: a thread still
        # busy then is abandoned, its messages handed back, as the default 30 s grace would)
        return subprocess.Popen([sys.executable, "-m", "orchestrator", "worker", "tickpipe:pipeline", "--backend", db,
                                 "--stage", "tick", "--log-level", "error", "--wait", "0.05", "--grace", "10"],
                                cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    procs = [spawn() for _ in range(3)]
    rng = random.Random(11)
    start = time.time()
    kills = 0
    try:
        # When, for 60 seconds, a random worker is SIGKILLed every 1-4 s and another started
        while time.time() - start < 60:
            time.sleep(rng.uniform(1, 4))
            victim = rng.randrange(3)
            procs[victim].send_signal(signal.SIGKILL)
            procs[victim].wait()
            kills += 1
            procs[victim] = spawn()
        end = time.time()
        time.sleep(3)  # let the last ticks run
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=30)
    # Then every tick between the first and the end has one job, and once what the killed
    # workers held has come back and been handled, each is COMPLETED once
    backend = open_backend(db)
    try:
        pipeline = runpy.run_path(str(tmp_path / "tickpipe.py"))["pipeline"]
        Worker(pipeline, "tick", backend, fire_schedules=False, wait_s=0.05).run(until_idle=True)
        jobs = backend.store.query()
        ticks = sorted(datetime.fromisoformat(j.job_id.split("@")[1]).timestamp() for j in jobs)
        assert kills >= 15
        assert len(ticks) == len(set(ticks))
        whole = [t for t in ticks if t <= end]
        assert whole == [float(t) for t in range(int(whole[0]), int(whole[-1]) + 1)], "a tick is missing"
        assert len(whole) >= 59
        assert all(j.status == JobStatus.COMPLETED and j.commits("tick") == 1 for j in jobs)
    finally:
        backend.close()
