"""A Django project for tests/test_django.py: tracked.django installed, its middleware,
the status route included; the store is $TRACKED_STORE."""

from __future__ import annotations

import os
from pathlib import Path

SECRET_KEY = "tests-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
ROOT_URLCONF = "tests.django_project.urls"
INSTALLED_APPS = ["django.contrib.contenttypes", "tracked.django"]
MIDDLEWARE = ["tracked.django.TrackedMiddleware"]
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [Path(__file__).resolve().parent / "templates"],
    "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
}]
DATABASES: dict[str, object] = {}
USE_TZ = True
TRACKED = {"STORE": os.environ.get("TRACKED_STORE"), "CANCEL": True}
WSGI_APPLICATION = "tests.django_project.wsgi.application"
