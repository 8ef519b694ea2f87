"""Step 5 — the cluster: state shared by routers and GPU hosts (one router needs none of it).

`store` (the `StateStore` interface), `memory_store` and `redis_store` (its two implementations; the Lua in
`lua/`), `leases` (GPU slots leased before members start), `registry` (hosts publish members, routers follow).
"""
