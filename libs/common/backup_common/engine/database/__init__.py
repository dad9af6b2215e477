"""The database engine: a consistent streaming dump, its loader, and the SQL port they reach a server through."""
