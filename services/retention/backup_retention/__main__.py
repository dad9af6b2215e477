"""`python -m backup_retention`: the retention service."""

from backup_retention.bootstrap import main

if __name__ == "__main__":
    main()
