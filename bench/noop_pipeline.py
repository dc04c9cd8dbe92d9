"""A no-op two-stage pipeline for the benchmarks."""

from orchestrator import JobStatus, Pipeline, Result

pipeline = Pipeline("noop")


@pipeline.stage("one", source="bench_a", emit_to="bench_b", wait_s=0.05)
def one(ctx, msg):  # type: ignore[no-untyped-def]
    return Result(status=JobStatus.RUNNING, emit=[{}])


@pipeline.stage("two", source="bench_b", wait_s=0.05)
def two(ctx, msg):  # type: ignore[no-untyped-def]
    return Result(status=JobStatus.COMPLETED)

# The same stages with begin="lazy": no begin write, the commit alone records the step.
lazy_pipeline = Pipeline("noop-lazy")
lazy_pipeline.stage("one", source="bench_a", emit_to="bench_b", wait_s=0.05, begin="lazy")(one)
lazy_pipeline.stage("two", source="bench_b", wait_s=0.05, begin="lazy")(two)

# And with begin="eager": a begin written before every handler (the default is "deferred").
eager_pipeline = Pipeline("noop-eager")
eager_pipeline.stage("one", source="bench_a", emit_to="bench_b", wait_s=0.05, begin="eager")(one)
eager_pipeline.stage("two", source="bench_b", wait_s=0.05, begin="eager")(two)

PIPELINES = {"deferred": pipeline, "lazy": lazy_pipeline, "eager": eager_pipeline}
