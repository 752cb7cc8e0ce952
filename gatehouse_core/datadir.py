"""Where training and quality scripts find the public datasets.

Always given by the user: ``--data DIR`` or ``$GATEHOUSE_DATA_DIR``. There is no default,
so no script ever reads from a path that happens to exist next to a checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "GATEHOUSE_DATA_DIR"


class DataDirMissing(ValueError):
    pass


def data_dir(given: str | Path | None = None) -> Path:
    """``given``, else ``$GATEHOUSE_DATA_DIR``; raises ``DataDirMissing`` saying how to set it."""
    if given:
        return Path(given)
    env = os.environ.get(ENV)
    if env:
        return Path(env)
    raise DataDirMissing(f"no data directory: pass --data DIR or set {ENV} (see the README's data table)")


def data_dir_or_none() -> Path | None:
    """``$GATEHOUSE_DATA_DIR`` if set (tests that need the full public data skip without it)."""
    env = os.environ.get(ENV)
    return Path(env) if env else None
