"""Helpers shared by `tests/` and `bench/`: the test recordings, long audio, edit distance, and real
servers on loopback.

`recordings` (and `long_audio`, which builds on it) read `tests/data` and so need the source
checkout. The serving code never imports this package.
"""
