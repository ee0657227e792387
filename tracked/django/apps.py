"""The Django app: add ``"tracked.django"`` to ``INSTALLED_APPS`` for the template tags
(``{% load tracked %}``)."""

from __future__ import annotations

from django.apps import AppConfig


class TrackedConfig(AppConfig):
    name = "tracked.django"
    label = "tracked"
    verbose_name = "tracked progress"
