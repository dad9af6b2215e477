"""Storage, archives, crypto, the database dump and load, the file trees: usable from storage and the key."""
