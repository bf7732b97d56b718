"""Run state: the claim, the run directory and its documents, the lease, the state machine."""
