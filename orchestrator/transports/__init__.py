"""Queue and topic adapters."""
