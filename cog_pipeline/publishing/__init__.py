"""After the jobs: reconcile's decisions, the result files, provenance, STAC, the report."""
