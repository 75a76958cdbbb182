"""Backups of the platform's data (the design's "Backup Architecture"): the KV WAL and snapshots, and the
service that keeps them (:mod:`backup.service`)."""

#: What the backup service can restore (``anylab restore-backup WHAT``, ``POST /v1/restore/<what>``).
RESTORABLE = ("kv", "do", "control")
