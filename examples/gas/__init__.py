"""GAS, the Genomics Annotation Service, as an orchestrator pipeline.

Stages: annotate (job_requests topic) -> job_results topic -> notify, archive; restore is fed by
``upgrade``. Run ``python -m examples.gas --help``.
"""
