"""`python -m backup_database`: the database_backup service."""

from backup_database.bootstrap import main

if __name__ == "__main__":
    main()
