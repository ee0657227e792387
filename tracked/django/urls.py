"""``path("_progress_status/", include("tracked.django.urls"))``: the status route under
any prefix (names may hold slashes), and tracked.js at ``{prefix}/?tracked.js``."""

from __future__ import annotations

from django.urls import re_path

from . import views

app_name = "tracked"
urlpatterns = [
    re_path(r"^(?P<name>.*)$", views.status, name="status"),
]
