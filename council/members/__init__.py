"""Step 3 — the members: llama-server processes, launched, warmed up, watched and restarted.

`binary` (the installed llama-server and its spec types), `launch` (the argument list), `states` (the state
machine's one table of edges), `process` (`MemberProcess`: everything about one process, and its life),
`supervisor` (starts, stops, adds and removes processes), `fleet` (the processes a plan asks for),
`pidfiles` and `logs` (cleanup after a killed router, bounded logs), `metrics` (a member's live figures).
"""
