"""Machine-readable logs: one JSON object per line in ``metrics.jsonl``; plots read these.

uv run python -c "from reslab.engine.logging import read_jsonl; help(read_jsonl)"
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class JsonlLogger:
    """Appends records to a JSONL file (flushed per line, so a crash loses nothing written), and
    mirrors numeric fields to TensorBoard event files in ``tensorboard_dir`` when given."""

    def __init__(
        self, path: str | Path, enabled: bool = True, tensorboard_dir: str | Path | None = None
    ) -> None:
        self.path, self.enabled = Path(path), enabled
        self._file = open(self.path, "a") if enabled else None  # noqa: SIM115
        self._tb = None
        if enabled and tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(tensorboard_dir))

    def log(self, **record: Any) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        self._file.flush()
        if self._tb is not None and "iteration" in record:
            step = record["iteration"]
            for key, value in record.items():
                if (
                    key not in ("iteration", "epoch")
                    and isinstance(value, int | float)
                    and not isinstance(value, bool)
                ):
                    self._tb.add_scalar(key, value, step)

    def truncate_after(self, iteration: int) -> None:
        """Drop records past ``iteration`` (written after the checkpoint a resume starts from)."""
        if self._file is None:
            return
        self._file.close()
        kept = [r for r in read_jsonl(self.path) if r.get("iteration", 0) <= iteration]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(self.path, "a")  # noqa: SIM115

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (strict JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def json_bytes(record: dict[str, Any]) -> bytes:
    """``record`` as indented, strictly valid JSON (non-finite numbers become null)."""
    return (json.dumps(finite(record), indent=2, allow_nan=False) + "\n").encode()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All records of a JSONL file (a torn last line, from a crash, is ignored)."""
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records
