"""mkdocs hook: drop nav entries whose page does not exist (yet).

Pages written by other changes (``reliability.md``, ``backends/kafka.md``) are listed in
``mkdocs.yml`` ahead of time; until they land, a strict build must not fail on them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.optional_nav")


def _keep(entry: Any, docs: Path) -> Any:
    """The entry without its missing pages, or None when nothing of it is left."""
    if isinstance(entry, str):
        external = entry.startswith(("http://", "https://"))
        return entry if external or (docs / entry).exists() else None
    if isinstance(entry, dict):
        kept = {}
        for title, value in entry.items():
            if isinstance(value, list):
                children = [c for c in (_keep(child, docs) for child in value) if c is not None]
                if children:
                    kept[title] = children
            elif _keep(value, docs) is not None:
                kept[title] = value
            else:
                log.info("optional_nav: %s (%s) is not written yet: not in the nav", title, value)
        return kept or None
    return entry


def on_config(config: Any) -> Any:
    """Filter ``config.nav`` against the files in ``docs_dir``."""
    if config.nav:
        docs = Path(config.docs_dir)
        config.nav = [e for e in (_keep(entry, docs) for entry in config.nav) if e is not None]
    return config
