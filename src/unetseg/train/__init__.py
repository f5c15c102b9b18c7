"""Training: plain functions for an epoch, validation, checkpoints, and the ``fit`` orchestrator."""
