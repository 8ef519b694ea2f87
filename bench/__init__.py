"""Benchmarks that start real llama-server processes; `tests/` imports their measuring code."""
