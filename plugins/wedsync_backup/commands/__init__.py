"""The backup protocol as commands: phase functions with typed inputs and results, knowing nothing of Airflow.

Each Airflow operator is a thin adapter over one phase (wedsync_airflow.operators); tests call the phases
directly. Where each phase lives:

- ``backup``: begin (preflight, opens the catalog row), export, replicate, verify, commit, mark_failed
- ``incremental``: begin (chain choice, slot safety, schema change), capture, release (the slot)
- ``prune``: prune (retention on every target, abandoned attempts, stale slots)
- ``restore``: plan (every check, nothing touched), restore (all or nothing)
- ``rebuild``: rebuild_catalog (the tracking tables from the repository)
- ``resources``: what a command needs from outside (policy, storage, catalog, databases, keys), the run
"""
