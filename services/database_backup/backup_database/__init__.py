"""The database backup service: consistent dumps of the application database into each backup."""
