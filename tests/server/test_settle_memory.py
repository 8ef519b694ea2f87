"""The router keeps what start-up built out of the cyclic collector's passes (gc.freeze), and a reload lets the old
plan's cycles go (bench/overhead.py measures what the passes cost per request)."""

from __future__ import annotations

import gc
import weakref

from council.server.router import settle_memory


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_settling_freezes_what_lives_and_a_second_settle_collects_what_left() -> None:
    try:
        old = _Cycle()
        gone = weakref.ref(old)
        settle_memory()
        assert gc.get_freeze_count() > 0 and gone() is old  # frozen, kept: still referenced
        del old
        gc.collect()
        assert gone() is not None  # a frozen cycle is not collected: the old plan's, after a reload, ...
        settle_memory()
        assert gone() is None  # ... until the reload's own settle unfreezes and collects it
    finally:
        gc.unfreeze()
