"""The operator's toolkit: dead letters, sweeper, doctor, chaos runs, metrics, config."""
