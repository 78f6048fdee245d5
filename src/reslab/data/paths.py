"""Where datasets live: ``--data-dir``, else ``$RESLAB_DATA``, else ``~/.cache/reslab/data``.

RESLAB_DATA=../shared/data uv run python -c "from reslab.data.paths import data_root; print(data_root())"
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "RESLAB_DATA"
DEFAULT_DATA_DIR = Path("~/.cache/reslab/data")


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The data directory: the argument, else ``$RESLAB_DATA``, else ``~/.cache/reslab/data``."""
    if data_dir is None:
        data_dir = os.environ.get(ENV_VAR) or DEFAULT_DATA_DIR
    return Path(data_dir).expanduser()
