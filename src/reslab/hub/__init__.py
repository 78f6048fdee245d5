"""Trained weights by name: reslab's own nets from the results ledger, and torchvision's ImageNet
weights, each with its architecture, preprocessing and measured error.

    uv run reslab weights list
    uv run python -c "from reslab.models import create_model; create_model('resnet20', weights='cifar10')"

``index.json`` beside this file is generated from the ledger by ``reslab report`` (never typed by
hand): an entry exists only for a finished run whose ``model.safetensors`` re-evaluates on the
data it was tested on (CIFAR-10's test set; Imagenette's validation folder with the run's 10 crops)
to the error its summary claims (the re-evaluation is kept in the run's ``reeval.json``). Names
are ``<model>.<tag>``: ``resnet20.cifar10_seed0`` (paper schedule), ``resnet20.cifar10_seed0_gpu``,
``resnet20.cifar10_sched1of8_seed0``, ``resnet32.cifar10_B_sched1of8_seed0`` (shortcut option B),
``resnet34.imagenette64_B_seed0`` (reslab's reduced ImageNet protocol, 10 classes, 64x64 crops);
``resnet20.cifar10`` is the paper schedule's seed-0 run (the CPU one where both exist), and
``resnet18.imagenette64`` that protocol's. ``resnet18.imagenet`` ... ``resnet152.imagenet``
are torchvision's IMAGENET1K_V1 weights in their v1.5 layout (``stride_in="3x3"``).

Files: in a source checkout, the ledger's own file; elsewhere ``~/.cache/reslab/weights/``,
downloaded from ``$RESLAB_WEIGHTS_URL`` (or the index's ``base_url``) + the ledger path, and used
only when its sha256 is the recorded one (a changed file is named, with how to restore it). A
broken download leaves nothing in the cache.
torchvision's files download through torchvision when online; offline, a file already in the
torch hub cache (``$TORCH_HOME``) or named by ``$RESLAB_TORCHVISION_WEIGHTS`` is used.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from reslab.errors import MissingFileError, WeightsError
from reslab.weights.files import find_weights, read_tensors

INDEX = Path(__file__).resolve().parent / "index.json"
CHECKOUT_RESULTS = Path(__file__).resolve().parents[3] / "results"  # a source checkout's ledger
TORCHVISION = {d: f"ResNet{d}_Weights.IMAGENET1K_V1" for d in (18, 34, 50, 101, 152)}
TOLERANCE = 0.05  # re-evaluated test error may differ by at most this (5 of 10,000 images)


def cache_dir() -> Path:
    return Path(os.environ.get("RESLAB_CACHE", "~/.cache/reslab")).expanduser() / "weights"


@functools.cache
def index() -> dict[str, Any]:  # (build.build_index clears this cache when it writes the file)
    """The generated index (``{"entries": {name: entry}, "aliases": {...}, ...}``)."""
    if not INDEX.is_file():
        return {"entries": {}, "aliases": {}}
    return json.loads(INDEX.read_text())


def names() -> list[str]:
    """Every weights name: reslab's entries, their aliases, torchvision's."""
    data = index()
    return sorted(
        [*data["entries"], *data["aliases"], *(f"resnet{d}.imagenet" for d in TORCHVISION)]
    )


def resolve(name: str, weights: str | None = None) -> dict[str, Any]:
    """The entry of ``name`` (``resnet20.cifar10``) or of model ``name`` with tag ``weights``."""
    full = name if weights is None else (weights if "." in weights else f"{name}.{weights}")
    data = index()
    full = data["aliases"].get(full, full)
    if full in data["entries"]:
        return {"name": full, **data["entries"][full]}
    model, _, tag = full.partition(".")
    depth = model.removeprefix("resnet")
    if tag == "imagenet" and depth.isdigit() and int(depth) in TORCHVISION:
        return {
            "name": full, "model": model, "source": "torchvision", "dataset": "imagenet",
            "torchvision": TORCHVISION[int(depth)], "model_options": {"stride_in": "3x3"},
        }  # fmt: skip
    raise WeightsError(
        f"no weights named {full!r}; available: {', '.join(names()) or '(none)'} "
        "(`reslab weights list` shows them with their errors)"
    )


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def weights_file(entry: dict[str, Any]) -> Path:
    """The verified file of a reslab entry: the ledger's in a checkout, else the cache's, else
    downloaded into the cache."""
    local = CHECKOUT_RESULTS / entry["file"]
    if local.is_file() and sha256(local) == entry["sha256"]:
        return local
    cached = cache_dir() / f"{entry['sha256'][:16]}-{entry['name']}.safetensors"
    if cached.is_file() and sha256(cached) == entry["sha256"]:
        return cached
    base = os.environ.get("RESLAB_WEIGHTS_URL") or index().get("base_url")
    if not base:
        _refuse_damaged(entry, local, cached)
        raise MissingFileError(
            f"{entry['name']}: {entry['file']} is not here and no download location is known; "
            "set RESLAB_WEIGHTS_URL to where the ledger's files are served"
        )
    return download(f"{base.rstrip('/')}/{entry['file']}", cached, entry["sha256"])


def _refuse_damaged(entry: dict[str, Any], local: Path, cached: Path) -> None:
    """A file of ``entry`` that is here but not the recorded one is named, with how to fix it."""
    for path, fix in (
        (local, f"restore the ledger's file (git checkout -- {local})"),
        (cached, "delete it and set RESLAB_WEIGHTS_URL to download it again"),
    ):
        if path.is_file():
            raise WeightsError(
                f"{entry['name']}: {path} does not have the recorded sha256 ({sha256(path)[:16]}... "
                f"instead of {entry['sha256'][:16]}...): it was changed or damaged; {fix}"
            )


def download(url: str, target: Path, expected_sha256: str, timeout: float = 60) -> Path:
    """``url`` into ``target``, through a temporary file renamed only once its sha256 is the
    expected one: a mismatch or a broken connection leaves nothing behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        digest = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=timeout) as response, open(fd, "wb") as out:
            expected_bytes = int(response.headers.get("Content-Length") or -1)
            written = 0
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
                digest.update(block)
                written += len(block)
        if expected_bytes >= 0 and written != expected_bytes:
            raise OSError(f"the connection ended after {written} of {expected_bytes} bytes")
        if digest.hexdigest() != expected_sha256:
            raise WeightsError(
                f"{url} does not have the recorded sha256 ({digest.hexdigest()[:16]}... instead of "
                f"{expected_sha256[:16]}...); the file was not used"
            )
        os.replace(tmp, target)
        return target
    except (urllib.error.URLError, OSError) as err:
        raise MissingFileError(
            f"cannot download {url} ({err}); is this machine offline? Put the file at {target} "
            "(its sha256 is checked) or set RESLAB_WEIGHTS_URL"
        ) from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def torchvision_state(entry: dict[str, Any]) -> dict[str, Any]:
    """torchvision's state dict: through torchvision (online, cached), else a local file."""
    import torch
    from torchvision.models import get_weight

    weights = get_weight(entry["torchvision"])
    filename = weights.url.rsplit("/", 1)[-1]
    candidates = [Path(torch.hub.get_dir()) / "checkpoints" / filename]
    if os.environ.get("RESLAB_TORCHVISION_WEIGHTS"):
        given = Path(os.environ["RESLAB_TORCHVISION_WEIGHTS"])
        candidates.insert(0, given / filename if given.is_dir() else given)
    for path in candidates:
        if path.is_file():
            return read_tensors(path).state
    try:
        return weights.get_state_dict(progress=True)
    except (urllib.error.URLError, OSError) as err:
        raise MissingFileError(
            f"{entry['name']}: cannot download {weights.url} ({err}); offline, put {filename} in "
            f"{candidates[-1].parent} or point RESLAB_TORCHVISION_WEIGHTS at it"
        ) from None


def table() -> str:
    """``reslab weights list``: every name with its dataset, measured error and source."""
    lines = [f"{'name':<36} {'test error':>10}  {'schedule':<8}  device / source"]
    data = index()
    for name, e in data["entries"].items():
        lines.append(f"{name:<36} {e['test_error']:>9.2f}%  {e['schedule']:<8}  {e['device']}")
    for alias, name in data["aliases"].items():
        lines.append(f"{alias:<36} {'':>10}  {'':<8}  = {name}")
    from torchvision.models import get_weight

    for depth, enum in TORCHVISION.items():
        top1 = 100 - get_weight(enum).meta["_metrics"]["ImageNet-1K"]["acc@1"]
        lines.append(f"{f'resnet{depth}.imagenet':<36} {top1:>9.2f}%  {'-':<8}  torchvision {enum} (their 1-crop top-1, v1.5 layout)")  # fmt: skip
    return "\n".join(lines)


def weights_path(source: str | Path) -> Path:
    """A run directory or weights file as given, else the file of the reslab weights named
    ``source`` (``resnet56.cifar10``)."""
    path = Path(source)
    if path.exists() or "." not in path.name or path.suffix in (".safetensors", ".pt", ".pth"):
        return find_weights(path)
    entry = resolve(str(source))
    if entry.get("source") == "torchvision":
        raise WeightsError(
            f"{entry['name']} are torchvision's weights, without reslab's metadata (classes, "
            "input normalisation); load them with create_model(name, weights='imagenet')"
        )
    return weights_file(entry)
