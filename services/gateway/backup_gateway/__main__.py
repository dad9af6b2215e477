"""`python -m backup_gateway`: serves the admin API until SIGINT or SIGTERM."""

from backup_gateway.bootstrap import main

if __name__ == "__main__":
    main()
