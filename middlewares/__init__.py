"""refwatch downloader middlewares: in-memory hashing, the address guard, per-host back-off."""
