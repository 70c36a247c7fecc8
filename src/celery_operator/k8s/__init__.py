"""The only package that talks to the Kubernetes API (plain dicts in and out)."""
