"""Developer tools that look at the whole repository (the services included); never imported by it."""
