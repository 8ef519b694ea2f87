"""Beside the path — setup: what `council setup` installs and `council doctor` checks.

`install/` (llama-server built from the pinned sdist, models assembled from PyPI wheels), `catalog` (the real
models and their checksums), `doctor` (is this machine ready?), `synthetic` (the tiny qwen35 MTP test model).
"""
