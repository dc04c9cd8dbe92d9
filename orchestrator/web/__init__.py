"""``orchestrator web``: a dashboard and JSON API for any pipeline (the ``web`` extra)."""
