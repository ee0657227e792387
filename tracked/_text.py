"""Text as it is stored: every str a store can encode, every message one line."""

from __future__ import annotations

import re

__all__ = ["clean_message", "clean_text", "describe_error"]

_SURROGATES = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """``text`` with each surrogate code point (what ``os.listdir`` returns for bytes
    that are not UTF-8) replaced by U+FFFD, so no write can fail to encode it."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATES.sub("\ufffd", text)
    return text


def clean_message(text: str) -> str:
    """A message as stored: clean text without its trailing line break."""
    if text.endswith("\n"):
        text = text[:-2] if text.endswith("\r\n") else text[:-1]
    return clean_text(text)


def describe_error(error: BaseException) -> str:
    """An exception as one line for records and logs: ``Type: message`` (or ``Type``)."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
