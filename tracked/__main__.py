"""``python -m tracked``: the same command as the ``tracked`` console script."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
