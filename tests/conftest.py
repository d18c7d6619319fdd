"""Shared test fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_weights_cache(tmp_path_factory):
    """Point the converted-weights cache (``HGD_CACHE_DIR``) at a session temp dir: tests never write
    into the user's real cache. A test may still override it with ``monkeypatch.setenv``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HGD_CACHE_DIR", str(tmp_path_factory.mktemp("hgd-cache")))
        yield
