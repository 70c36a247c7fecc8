"""Generated manifests: what `make manifests` writes (pure rendering + one write function)."""
