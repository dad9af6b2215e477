"""The retention service: runs the backup schedule, applies the retention policy, carries out
deletions (files, then the data key: crypto-erase) and keeps the catalog tidy."""
