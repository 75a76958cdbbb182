"""Benchmarks (not tests): each script prints JSON; results in bench/results/."""
