"""`python -m backup_verification`: the verification service."""

from backup_verification.bootstrap import main

if __name__ == "__main__":
    main()
