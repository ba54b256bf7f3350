"""Weddings as the unit of protection: what a wedding's data is (slice), its phases, and its backups."""
