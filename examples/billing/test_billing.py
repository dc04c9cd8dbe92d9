"""The public harness finds the double-invoice bug, with the shrunk crash plan, and passes the fix."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import Phase, settings

from examples.billing import Ledger, billing_pipeline
from orchestrator.testing import FaultPlan, Schedule, Simulation, pipeline_property, simulate

JOBS = ["order-1", "order-2"]


def submit(sim: Simulation) -> None:
    for job in JOBS:
        sim.submit(job, {"qty": 2}, queue="orders")


def one_invoice_per_job(ledger: Ledger, sim: Simulation) -> None:
    """At most one invoice per job, and exactly one for each COMPLETED job (a job that
    crashes more often than max_receives allows is FAILED, uncharged)."""
    counts = Counter(job for job, _ in ledger.invoices)
    for j in JOBS:
        job = sim.backend.store.get(j)
        expected = {1} if job is not None and job.status.value == "COMPLETED" else {0, 1}
        assert counts[j] in expected, f"invoices per job: {dict(counts)}"


def property_for(idempotent: bool, failing: list[tuple[FaultPlan, Schedule]], *, stalls: bool = True):  # type: ignore[no-untyped-def]
    ledger = Ledger()
    pipeline = billing_pipeline(ledger, idempotent=idempotent)

    def submit_fresh(sim: Simulation) -> None:
        ledger.clear()
        submit(sim)

    def check(sim: Simulation) -> None:
        try:
            one_invoice_per_job(ledger, sim)
        except AssertionError:
            failing.append((sim.faults, sim.schedule))  # type: ignore[arg-type]
            raise

    # no "explain" phase: it varies the minimal example after shrinking, and the last failing
    # run must be the shrunk one
    return settings(max_examples=300, database=None, phases=(Phase.generate, Phase.shrink))(
        pipeline_property(pipeline, submit_fresh, check=check, job_ids=JOBS, stalls=stalls))


def test_the_harness_finds_the_double_invoice_and_shrinks_the_crash_plan() -> None:
    failing: list[tuple[FaultPlan, Schedule]] = []
    # Stalls alone (a paused worker whose lease lapses) also re-run the handler; without them
    # the only way to a second invoice is a crash after the handler.
    with pytest.raises(AssertionError, match="invoices per job"):
        property_for(idempotent=False, failing=failing, stalls=False)()
    shrunk, schedule = failing[-1]  # hypothesis replays the minimal failing example last
    assert len(shrunk.faults) <= 4, shrunk.faults  # crash_plans draws at most 4; shrinking keeps it small
    culprits = [f for f in shrunk.faults if f.point == "after_handle" and f.stage in ("charge", None)]
    assert culprits, f"the shrunk plan should crash the charge stage after its handler: {shrunk.faults}"
    # the reported plan and schedule replay the double invoice deterministically
    ledger = Ledger()
    simulate(billing_pipeline(ledger, idempotent=False), submit, FaultPlan.of(shrunk.faults), schedule)
    assert max(Counter(job for job, _ in ledger.invoices).values()) == 2


def test_the_idempotent_handler_survives_every_crash_plan() -> None:
    property_for(idempotent=True, failing=[])()
