"""Chaos tests: conductors in processes under faults, checked against their history."""
