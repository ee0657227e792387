"""The one ``TRACKED`` setting (a dict), read once per process and merged over the
defaults: ``STORE`` (a directory or store URL; None: the process default),
``CANCEL`` (allow DELETE on the status route), ``SHOW_ERRORS`` and
``MAX_STREAM_SECONDS`` (0: no event streams, as under sync workers)."""

from __future__ import annotations

import functools
from typing import Any

from django.conf import settings as django_settings

import tracked
from tracked._web import StatusService

__all__ = ["DEFAULTS", "service", "settings", "store"]

DEFAULTS: dict[str, Any] = {
    "STORE": None,
    "CANCEL": False,
    "SHOW_ERRORS": True,
    "MAX_STREAM_SECONDS": 60.0,
}


def settings() -> dict[str, Any]:
    """``settings.TRACKED`` over ``DEFAULTS``; an unknown key is ``InvalidValue``."""
    given = getattr(django_settings, "TRACKED", {}) or {}
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise tracked.InvalidValue(
            f"settings.TRACKED has unknown keys {unknown}; known: {sorted(DEFAULTS)}"
        )
    return {**DEFAULTS, **given}


@functools.lru_cache(maxsize=1)
def service() -> StatusService:
    """The status service of this process, made from the settings once."""
    chosen = settings()
    return StatusService(
        chosen["STORE"], cancel=bool(chosen["CANCEL"]), show_errors=bool(chosen["SHOW_ERRORS"]),
        max_stream_seconds=float(chosen["MAX_STREAM_SECONDS"]),
    )


def store() -> tracked.Store | None:
    """The store of the settings (None: the process default at each use)."""
    return service().store
