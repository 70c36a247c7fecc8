"""The API: the pydantic models of the three kinds, their table, and the shared vocabulary."""
