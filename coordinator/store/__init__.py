"""The coordinator's SQLite store."""
