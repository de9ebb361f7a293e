"""Process wiring: the embedded Redis, the whole stack in one process tree, metrics."""
