"""komm-policy benchmarks: `make bench` (or `python -m bench.run`); see bench/README.md."""
