"""Drift: read the world back, compare it with the definitions and the journal, repair what a pool allows."""
