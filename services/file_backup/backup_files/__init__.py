"""The file backup service: archives of the uploads, configs and logs trees, full and incremental."""
