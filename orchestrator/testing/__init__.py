"""Test harness for pipelines: deterministic simulation, fault plans, invariants."""
