"""Change capture through PostgreSQL logical decoding (the hourly incremental tier)."""
