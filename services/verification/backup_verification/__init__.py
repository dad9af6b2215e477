"""The verification service: proves every completed backup intact and restorable, again and again."""
