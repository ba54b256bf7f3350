"""WedSync Backup core library.

Knows nothing of Airflow: export, crypto, storage, manifest, restore and catalog live here and are
driven by thin operators in ``wedsync_airflow``.
"""

FORMAT_VERSION = 1
