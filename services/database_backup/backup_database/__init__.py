"""The database backup service: consistent dumps of the application database, and their loader."""
