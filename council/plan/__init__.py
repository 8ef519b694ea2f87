"""Step 2 — the plan: how much memory each member process takes and where it goes.

`gguf` (a fast GGUF header reader), `estimate` (bytes per process: weights, KV, recurrent state, MTP, compute),
`gpus` (NVML or declared GPUs), `slots` (whole councils packed into fixed slots), `planner` (policy → plan,
with the configuration each admitted council runs with, declared or fallback).
"""
