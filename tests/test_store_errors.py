"""vidqa.store.errors: the store's errors are one-line VidqaErrors; CacheLocked names the holder."""

from __future__ import annotations

from vidqa.errors import VidqaError
from vidqa.store import CacheError, CacheLocked, CacheWarning


def test_errors():
    held = CacheLocked("ab" * 32, 4321)
    assert isinstance(held, CacheError) and isinstance(held, VidqaError) and (held.key, held.pid) == ("ab" * 32, 4321)
    assert str(held) == "cache entry abababababab is being computed by process 4321; wait or try again"
    assert "by another process" in str(CacheLocked("ab" * 32, None))
    assert issubclass(CacheWarning, UserWarning) and not issubclass(CacheWarning, VidqaError)
