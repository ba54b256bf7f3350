"""A local stack without Docker: a throwaway PostgreSQL cluster, S3 (moto) and GCS (emulator) servers.

Used by the README's run command and by the test suite, so both exercise the same real components.
"""
