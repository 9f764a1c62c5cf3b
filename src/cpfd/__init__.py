"""cpfd."""
