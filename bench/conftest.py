"""pytest-benchmark suite: ``python -m pytest bench`` (not part of the tests).

Each benchmark calls its function once before timing so that Numba compile
time is kept out of the timed rounds (compile time is reported by
``fastbilevel bench`` as ``first s``).
"""
