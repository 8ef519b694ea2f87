"""The one root of council's exceptions.

Every error council raises on purpose derives from `CouncilError`, so a caller can catch council's failures
without catching bugs, and the HTTP layer (`council.server.errors`) maps each kind to a status in one table:
no lower layer knows about HTTP. Where an error also is a `ValueError` or `RuntimeError` by nature, it
keeps that base too, so existing `except ValueError` callers still work.
"""

from __future__ import annotations


class CouncilError(Exception):
    """Base of every error council raises on purpose; its message is one line for a user."""
