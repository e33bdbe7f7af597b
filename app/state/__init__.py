"""What the gateway must remember — stored responses, quota counters and reservations, and later the cache and
batches — behind one small interface (:class:`~app.state.base.StateStore`): embedded SQLite in
``GATEWAY_STATE_DIR`` by default (nothing to install; shared by the workers of one host), Redis
(``GATEWAY_REDIS_URL``) when replicas or fronts share it. Both implementations pass the same tests."""

from __future__ import annotations

from app.core.settings import Settings
from app.state.base import (
    COUNTERS,
    DIMENSIONS,
    Decision,
    Limits,
    Record,
    StateStore,
    StoreDown,
    StoreFull,
    Tally,
    Usage,
)


def open_store(settings: Settings) -> StateStore:
    """The store these settings name: Redis when ``GATEWAY_REDIS_URL`` is set, else SQLite in the state dir."""
    if settings.redis_url:
        from app.state.redis import RedisStore

        return RedisStore(settings.redis_url)
    from app.state.sqlite import SqliteStore

    return SqliteStore(settings.state_dir / "gateway.sqlite3")


__all__ = ["COUNTERS", "DIMENSIONS", "Decision", "Limits", "Record", "StateStore", "StoreDown", "StoreFull", "Tally",
           "Usage", "open_store"]
