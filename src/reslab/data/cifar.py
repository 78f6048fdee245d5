"""CIFAR-10 in memory: uint8 images N x 3 x 32 x 32 and int64 labels, checksummed.

    uv run python -c "from reslab.data.cifar import load_cifar10; print(load_cifar10(split='test')[0].shape)"

Reads the official python batches from ``<data_dir>/cifar-10-batches-py`` (or extracts the official
``cifar-10-python.tar.gz`` found in ``<data_dir>``), downloads the archive when neither is there and
the machine is online, and otherwise fails with a message saying which files to put where.

Splits: ``train`` (50,000), ``test`` (10,000), and the paper's hyper-parameter split of the
training set: ``val5k`` is the last 500 images of each class in the official training order
(exactly 5,000, class-balanced, no random numbers involved) and ``train45k`` the other 45,000.
"""

from __future__ import annotations

import hashlib
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from reslab.data.paths import data_root
from reslab.errors import DataError, MissingFileError

CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
# Accepted checksums per file: the official release, and the copy whose per-image filenames are
# placeholders (same pixels and labels; see the shared data README).
MD5 = {
    "batches.meta": {"5ff9c542aee3614f3951f8cda6e48888"},
    "data_batch_1": {"c99cafc152244af753f735de768cd75f", "3c94633564e8e8c1bc4f2c1ed584171c"},
    "data_batch_2": {"d4bba439e000b95fd0a9bffe97cbabec", "2c7aeb5caeb4535585f801922d6e33c6"},
    "data_batch_3": {"54ebc095f3ab1f0389bbae665268c751", "4c898b93f96bdf168e7a14f6aac11130"},
    "data_batch_4": {"634d18415352ddfa80567beed471001a", "81ccdcb89569e5287a9ee71b469a2c32"},
    "data_batch_5": {"482c414d41f54cd18b22e5b47cb7c3cb", "a55ded42e64c46c15fa2f65d11505fb9"},
    "test_batch": {"40351d587109b95175f43aff81a1287e", "122e5ea8ddccfcb4d324a4a3f90c5bac"},
}
SPLITS = ("train", "test", "train45k", "val5k")
VAL_PER_CLASS = 500


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR batch and nothing else: only numpy's array reconstruction is allowed."""

    _ALLOWED = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"CIFAR batch refers to {module}.{name}; refusing to load it"
            )
        if module == "numpy.core.multiarray":  # numpy >= 2 moved it; avoid the deprecated alias
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _md5(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def _missing_message(root: Path, missing: list[str], reason: str) -> str:
    return (
        f"CIFAR-10 not found: {reason}. Expected the official python batches in {root / FOLDER}/ "
        f"(missing: {', '.join(missing)}) or the archive {root / ARCHIVE} (from {URL}). "
        "Put them there, or point --data-dir / $RESLAB_DATA at a directory that holds "
        f"{FOLDER}/ (for example ../shared/data)."
    )


def _download(root: Path, timeout: float = 30.0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=root, suffix=".part")
    try:
        with urllib.request.urlopen(URL, timeout=timeout) as response, open(fd, "wb") as out:
            shutil.copyfileobj(response, out)
        if _md5(Path(tmp)) != ARCHIVE_MD5:
            raise OSError(f"downloaded {URL} but its md5 is not {ARCHIVE_MD5}")  # caught below
        target = root / ARCHIVE
        Path(tmp).replace(target)
        return target
    finally:
        Path(tmp).unlink(missing_ok=True)


def _extract(archive: Path, root: Path) -> None:
    """Unpack the archive; the batches' own checksums are verified when they are read."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(root, filter="data")
    except (tarfile.TarError, OSError) as err:
        raise DataError(f"{archive} is not a readable cifar-10-python.tar.gz ({err})") from None


def cifar10_folder(data_dir: str | Path | None = None, download: bool = True) -> Path:
    """The folder holding the batches, extracting or downloading them when needed."""
    root = data_root(data_dir)
    folder = root / FOLDER
    missing = [f for f in (*TRAIN_FILES, *TEST_FILES) if not (folder / f).is_file()]
    if not missing:
        return folder
    archive = root / ARCHIVE
    if not archive.is_file():
        if not download:
            raise MissingFileError(_missing_message(root, missing, "download=False"))
        try:
            archive = _download(root)
        except OSError as err:
            raise MissingFileError(
                _missing_message(
                    root, missing, f"downloading it failed, is this machine offline? ({err})"
                )
            ) from err
    _extract(archive, root)
    return folder


def _read_batch(path: Path, verify: bool) -> tuple[np.ndarray, np.ndarray]:
    if verify:
        digest = _md5(path)
        if digest not in MD5[path.name]:
            raise DataError(
                f"{path} has md5 {digest}, which is neither the official CIFAR-10 checksum nor the "
                "known re-packaged one; the file is corrupt or not CIFAR-10 (pass verify=False to "
                "load it anyway)"
            )
    with open(path, "rb") as f:
        batch = _BatchUnpickler(f, encoding="latin1").load()
    images = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return images, np.asarray(batch["labels"], dtype=np.int64)


@lru_cache(maxsize=4)
def _load_files(
    folder: Path, files: tuple[str, ...], verify: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [_read_batch(folder / name, verify) for name in files]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return images, labels


def val5k_mask(labels: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the ``val5k`` split: the last 500 images of each class in ``labels``."""
    mask = torch.zeros(len(labels), dtype=torch.bool)
    for c in range(len(CLASSES)):
        mask[torch.nonzero(labels == c).flatten()[-VAL_PER_CLASS:]] = True
    return mask


def load_cifar10(
    data_dir: str | Path | None = None,
    split: str = "train",
    *,
    verify: bool = True,
    download: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 ``split`` as (uint8 images N x 3 x 32 x 32, int64 labels); see the module doc."""
    if split not in SPLITS:
        raise DataError(f"split={split!r} is invalid; valid choices: {', '.join(SPLITS)}")
    folder = cifar10_folder(data_dir, download)
    files = TEST_FILES if split == "test" else TRAIN_FILES
    images, labels = _load_files(folder.resolve(), files, verify)
    if split in ("train45k", "val5k"):
        mask = val5k_mask(labels)
        keep = mask if split == "val5k" else ~mask
        images, labels = images[keep], labels[keep]
    return images.clone(), labels.clone()
