"""What the cache store raises and warns (all re-exported by ``vidqa.store``)."""

from __future__ import annotations

from vidqa.errors import VidqaError


class CacheError(VidqaError):
    """The cache store cannot be used as asked (unwritable root, bad key, inconsistent put)."""


class CacheLocked(CacheError):
    """A non-blocking ``Store.lock`` found the entry's lock held by another process (or fd)."""

    def __init__(self, key: str, pid: int | None):
        holder = f"process {pid}" if pid else "another process"
        super().__init__(f"cache entry {key[:12]} is being computed by {holder}; wait or try again")
        self.key, self.pid = key, pid


class CacheWarning(UserWarning):
    """``Store.get`` found a corrupt entry, removed it, and returned None so the caller recomputes."""
