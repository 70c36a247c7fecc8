"""The admission webhook: one FastAPI app that mutates and validates the three kinds."""
