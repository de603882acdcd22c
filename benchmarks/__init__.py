"""Benchmarks of presence against the floor it stands on: `python -m benchmarks`.

Not tests: each run measures crash and hang detection, recovery, capacity and footprint against
a private Mosquitto and writes a Markdown report (see `benchmarks/__main__.py`).
"""
