"""The public harness finds the double-invoice bug, with the shrunk crash plan, and passes the fix."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import Phase, settings

from examples.billing import Ledger, billing_pipeline
from orchestrator.testing import FaultPlan, Simulation, pipeline_property

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


def property_for(idempotent: bool, failing_plans: list[FaultPlan]):  # type: ignore[no-untyped-def]
    ledger = Ledger()
    pipeline = billing_pipeline(ledger, idempotent=idempotent)

    def submit_fresh(sim: Simulation) -> None:
        ledger.clear()
        submit(sim)

    def check(sim: Simulation) -> None:
        try:
            one_invoice_per_job(ledger, sim)
        except AssertionError:
            failing_plans.append(sim.faults)  # type: ignore[arg-type]
            raise

    # no "explain" phase: it varies the minimal example after shrinking, and the last failing
    # run must be the shrunk one
    return settings(max_examples=300, database=None, phases=(Phase.generate, Phase.shrink))(
        pipeline_property(pipeline, submit_fresh, check=check, job_ids=JOBS))


def test_the_harness_finds_the_double_invoice_and_shrinks_the_crash_plan() -> None:
    plans: list[FaultPlan] = []
    with pytest.raises(AssertionError, match="invoices per job"):
        property_for(idempotent=False, failing_plans=plans)()
    shrunk = plans[-1]  # hypothesis replays the minimal failing example last
    assert len(shrunk.faults) == 1
    assert shrunk.faults[0].point == "after_handle"  # the handler ran, its result was lost
    assert shrunk.faults[0].stage in ("charge", None)


def test_the_idempotent_handler_survives_every_crash_plan() -> None:
    property_for(idempotent=True, failing_plans=[])()
