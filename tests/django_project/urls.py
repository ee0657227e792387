"""The page, three jobs, and the status route included under /_progress_status/."""

from __future__ import annotations

import os
import time

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import include, path

import tracked

STEPS = 10
PAUSE = float(os.environ.get("TRACKED_DEMO_PAUSE", "0.05"))


@tracked.tracked("django-job", total=STEPS)
def job(request: HttpRequest) -> JsonResponse:
    """Runs in the request; its JsonResponse is the answer, not the run's result."""
    for step in range(1, STEPS + 1):
        time.sleep(PAUSE)
        tracked.current().increment(1, f"step {step} of {STEPS}")
    return JsonResponse({"done": STEPS})


@tracked.tracked("django-job", total=STEPS * 10)
def background() -> dict[str, int]:
    for _ in range(STEPS * 10):
        tracked.current().check()
        time.sleep(PAUSE)
        tracked.current().increment(1)
    return {"done": STEPS * 10}


def start_background(request: HttpRequest) -> HttpResponse:
    progress = tracked.submit(background)
    response = JsonResponse({"status_url": tracked.status_url(progress)}, status=202)
    response["Location"] = tracked.status_url(progress)
    return response


def page(request: HttpRequest) -> HttpResponse:
    return render(request, "page.html", {"name": request.GET.get("name", "django-job"),
                                         "progress_id": request.GET.get("progress_id")})


urlpatterns = [
    path("", page),
    path("jobs/main", job),
    path("jobs/background", start_background),
    path("_progress_status/", include("tracked.django.urls")),
]
