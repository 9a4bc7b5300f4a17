"""The persistent cache store: per-frame caches of whole videos, on disk, shared between processes.

``store`` (the ``Store``: get, put, lock, entries, remove, verify), ``keys`` (entry keys and the
video hash memo), ``record`` (an entry's JSON metadata), ``codec`` (safetensors without a copy),
``io`` (atomic writes and flock locks), ``errors``. Typical use (the lock only avoids computing the
same entry twice; correctness never depends on it)::

    store = Store(cache_dir)                   # None: $VIDQA_CACHE_DIR, $XDG_CACHE_HOME/vidqa, ~/.cache/vidqa
    key = store.key(video, settings)           # settings: model_fingerprint, method, tokens_per_frame, dtype, sampling
    with store.lock(key, blocking=True):
        cache = store.get(key, settings)       # None if absent or corrupt (CacheWarning, entry removed)
        if cache is None:
            cache = compute()
            store.put(key, cache, {"source": video, "settings": settings, "model_id": model_id,
                                   "frame_indices": frames.indices.tolist()})

Not for Windows (fcntl); fine on local filesystems, best effort on NFS (flock is emulated there).
"""

from vidqa.options import cache_root as default_root
from vidqa.store.errors import CacheError, CacheLocked, CacheWarning
from vidqa.store.keys import REQUIRED_SETTINGS, STORE_FORMAT
from vidqa.store.store import EntryInfo, Store

__all__ = ["CacheError", "CacheLocked", "CacheWarning", "EntryInfo", "REQUIRED_SETTINGS", "STORE_FORMAT", "Store",
           "default_root"]
