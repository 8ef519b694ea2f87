"""Step 6 — the server: the OpenAI-compatible HTTP API.

`router` (the running policy the routes call, and its reload), `app` (the FastAPI app from `routes/`: chat,
models and ballots, health and metrics, admin, internal), `requests` (the OpenAI request bodies as pydantic
models), `auth` (keys and scopes), `limits` (rate, in-flight, queue), `errors` (every council error mapped to
one HTTP status), `metrics` (Prometheus), `deps` (what handlers ask FastAPI for).
"""
