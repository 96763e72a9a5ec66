"""refwatch spiders: they turn snapshot references into requests, and responses into outcome rows."""
