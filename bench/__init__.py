"""Benchmark of the full backup and the restore against pg_dump/pg_restore (see bench/RESULTS.md)."""
