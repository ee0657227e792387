"""``{% load tracked %}``: ``{% tracked_script %}`` (the ``<script>`` of tracked.js, with
the request's CSP nonce when there is one) and ``{% tracked_progress name
progress_id=... %}`` (a ``<tracked-progress>`` following that run). Every value is
escaped by ``format_html``."""

from __future__ import annotations

from typing import Any

from django import template
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

import tracked

from ..views import SCRIPT_QUERY

register = template.Library()

#: The element's attributes a tag may set, as keyword arguments (``-`` as ``_``).
ATTRIBUTES = ("label", "transport", "interval", "messages", "cancel", "id", "class")


@register.simple_tag(takes_context=True)
def tracked_script(context: dict[str, Any]) -> SafeString:
    """``<script src="…/?tracked.js" defer>``, with ``request.csp_nonce`` if set."""
    url = reverse("tracked:status", kwargs={"name": ""}) + "?" + SCRIPT_QUERY
    request = context.get("request")
    nonce = getattr(request, "csp_nonce", None)
    if nonce:
        return format_html('<script src="{}" nonce="{}" defer></script>', url, nonce)
    return format_html('<script src="{}" defer></script>', url)


@register.simple_tag
def tracked_progress(name: str | None, progress_id: str | None = None, **attrs: Any) -> SafeString:
    """``<tracked-progress src="{status URL of name}" progress-id="…">``; ``cancel=True``
    shows the Stop button, other keywords become attributes (``ATTRIBUTES``)."""
    root = reverse("tracked:status", kwargs={"name": ""}).rstrip("/")
    src = tracked.status_url(name, prefix=root) if name is not None else root + "/"
    pairs: list[tuple[str, str]] = [("src", src)]
    if progress_id:
        pairs.append(("progress-id", str(progress_id)))
    for key, value in attrs.items():
        attribute = key.replace("_", "-")
        if attribute not in ATTRIBUTES:
            raise template.TemplateSyntaxError(
                f"tracked_progress: unknown attribute {key!r}; known: {', '.join(ATTRIBUTES)}"
            )
        if value is True:
            pairs.append((attribute, ""))
        elif value not in (None, False):
            pairs.append((attribute, str(value)))
    attributes = format_html_join(" ", '{}="{}"', pairs)
    return format_html("<tracked-progress {}></tracked-progress>", attributes)
