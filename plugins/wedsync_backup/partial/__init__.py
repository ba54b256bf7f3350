"""Partial restores into a live database: chosen weddings (``wedding-only``) or chosen tables (``selective``).

The backup's rows are staged beside the live ones (temporary tables of one session), compared, saved by a
safety snapshot (a ``pre_restore`` backup of exactly what will be replaced) and then swapped in by ONE
transaction; everything outside the scope is left alone.
"""
