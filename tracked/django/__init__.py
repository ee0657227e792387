"""tracked in a Django project: an app for ``INSTALLED_APPS``, the status route as a
URL include, a middleware putting each request's ``progress_id`` and store in scope,
and a template tag rendering ``<tracked-progress>``.

    INSTALLED_APPS = [..., "tracked.django"]
    MIDDLEWARE = [..., "tracked.django.TrackedMiddleware"]
    urlpatterns = [..., path("_progress_status/", include("tracked.django.urls"))]
    TRACKED = {"STORE": "/var/lib/myapp/progress"}   # optional; see settings()

Requires Django (``pip install 'tracked[django]'``). A Django response returned by a
``@tracked`` view is the view's answer, never a run's result: it is not published
and nothing is logged about it.
"""

from __future__ import annotations

try:
    from django.http import HttpResponseBase
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError(
        "tracked.django needs Django: pip install 'tracked[django]'"
    ) from exc

from .._state import NOT_RESULTS
from ._middleware import TrackedMiddleware
from ._settings import settings

__all__ = ["TrackedMiddleware", "settings"]

if HttpResponseBase not in NOT_RESULTS:
    NOT_RESULTS.append(HttpResponseBase)
