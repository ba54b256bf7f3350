"""``python -m wedsync_backup.configurations restore|show ...`` (see cli.py)."""

from wedsync_backup.configurations.cli import main

raise SystemExit(main())
