"""The kind controllers: gather from the cache, plan (`plans/`), apply; the runtime under them."""
