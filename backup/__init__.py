"""Backups of the platform's data (the design's "Backup Architecture"): the KV WAL and snapshots, and the
service that keeps them (:mod:`backup.service`)."""
