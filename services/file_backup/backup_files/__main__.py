"""`python -m backup_files`: the file_backup service."""

from backup_files.bootstrap import main

if __name__ == "__main__":
    main()
