"""A two-stage pipeline: square a number, then add one. The README's example."""

import time

from orchestrator import JobStatus, Pipeline, Result

pipeline = Pipeline("quickstart")


@pipeline.stage("square", source="numbers", emit_to="squared", max_receives=5, visibility_timeout_s=5, wait_s=0.1)
def square(ctx, msg):  # type: ignore[no-untyped-def]
    x = msg.payload["x"]
    time.sleep(0.02)  # stands in for real work, so the demo's kill lands mid-run
    return Result(status=JobStatus.RUNNING, fields={"square": x * x}, emit=[{"square": x * x}])


@pipeline.stage("plus_one", source="squared", max_receives=5, visibility_timeout_s=5, wait_s=0.1)
def plus_one(ctx, msg):  # type: ignore[no-untyped-def]
    return Result(status=JobStatus.COMPLETED, fields={"answer": msg.payload["square"] + 1})
