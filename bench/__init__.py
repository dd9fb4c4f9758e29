"""The benchmarks; they never run as part of the test suite. Run each from the repository root as a
module, e.g. `python -m bench.stream --quick` (see the README, "Benchmarks")."""
