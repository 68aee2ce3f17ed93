"""Load scenarios and benchmarks (not run by pytest)."""
