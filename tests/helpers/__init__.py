"""Helpers shared by the test suite (spawned-process targets, models, in-process pairs, the
shared-memory leak check). Tests import them from here; ``conftest.py`` only wires fixtures."""
