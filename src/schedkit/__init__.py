"""schedkit."""
