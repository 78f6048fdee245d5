"""CIFAR-10 loading, splits, statistics and the batched augmentation, on the real dataset."""

from __future__ import annotations

import pickle
import shutil
import tarfile
import urllib.error

import pytest
import torch

from reslab.data import Normalize, TensorLoader, load_cifar10, random_crop_flip
from reslab.data import cifar as cifar_module


def test_sizes_and_class_counts(data_dir):
    for split, n in (("train", 50_000), ("test", 10_000), ("train45k", 45_000), ("val5k", 5_000)):
        images, labels = load_cifar10(data_dir, split)
        assert images.shape == (n, 3, 32, 32) and images.dtype == torch.uint8
        assert labels.shape == (n,) and labels.dtype == torch.int64
        assert torch.bincount(labels, minlength=10).tolist() == [n // 10] * 10


def test_known_training_statistics(data_dir):
    images, _ = load_cifar10(data_dir, "train")
    x = images.double() / 255
    torch.testing.assert_close(
        x.mean((0, 2, 3)),
        torch.tensor([0.4914, 0.4822, 0.4465], dtype=torch.double),
        atol=1e-4,
        rtol=0,
    )
    torch.testing.assert_close(
        x.std((0, 2, 3)),
        torch.tensor([0.2470, 0.2435, 0.2616], dtype=torch.double),
        atol=1e-4,
        rtol=0,
    )


def test_split_45k_5k_is_a_disjoint_partition(data_dir):
    train, train_labels = load_cifar10(data_dir, "train")
    mask = cifar_module.val5k_mask(train_labels)
    val, _ = load_cifar10(data_dir, "val5k")
    rest, _ = load_cifar10(data_dir, "train45k")
    assert torch.equal(val, train[mask]) and torch.equal(rest, train[~mask])
    assert mask.sum() == 5000
    # the last 500 of each class in the official order
    for c in range(10):
        idx = torch.nonzero(train_labels == c).flatten()
        assert mask[idx[-500:]].all() and not mask[idx[:-500]].any()


def test_bad_split_and_missing_data(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="valid choices: train, test, train45k, val5k"):
        load_cifar10(tmp_path, "validation")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(cifar_module.urllib.request, "urlopen", offline)
    with pytest.raises(
        FileNotFoundError, match=r"offline.*cifar-10-batches-py.*data_batch_1.*RESLAB_DATA"
    ):
        load_cifar10(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="download=False"):
        load_cifar10(tmp_path, "test", download=False)


BATCHES = (
    "data_batch_1",
    "data_batch_2",
    "data_batch_3",
    "data_batch_4",
    "data_batch_5",
    "test_batch",
)


def test_corrupt_batch_is_refused(data_dir, tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in BATCHES[:-1]:
        (folder / name).symlink_to(data_dir / "cifar-10-batches-py" / name)
    raw = bytearray((data_dir / "cifar-10-batches-py" / "test_batch").read_bytes())
    raw[5000] ^= 0xFF
    (folder / "test_batch").write_bytes(raw)
    with pytest.raises(ValueError, match=r"md5.*corrupt"):
        load_cifar10(tmp_path, "test")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_unpickler_refuses_code(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in BATCHES:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": _Evil(), "labels": [0]}, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_cifar10(tmp_path, "test", verify=False)


def test_reads_the_official_archive_layout(data_dir, tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        for name in ("batches.meta", *BATCHES):
            tar.add(data_dir / "cifar-10-batches-py" / name, arcname=f"cifar-10-batches-py/{name}")
    images, labels = load_cifar10(tmp_path, "test", download=False)
    expected, expected_labels = load_cifar10(data_dir, "test")
    assert torch.equal(images, expected) and torch.equal(labels, expected_labels)
    shutil.rmtree(tmp_path / "cifar-10-batches-py")


def test_random_crop_flip_properties():
    g = torch.Generator().manual_seed(0)
    n = 512
    images = torch.randint(1, 256, (n, 3, 32, 32), dtype=torch.uint8)  # no zero pixels
    out = random_crop_flip(images, g)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    shifts, flips = set(), 0
    for i in range(n):
        found = False
        for flip in (False, True):
            src = padded[i].flip(-1) if flip else padded[i]
            for dy in range(9):
                for dx in range(9):
                    if torch.equal(src[:, dy : dy + 32, dx : dx + 32], out[i]):
                        shifts.add((dy - 4, dx - 4 if not flip else 4 - dx))
                        flips += flip
                        found = True
                        break
                if found:
                    break
            if found:
                break
        assert found, f"image {i} is not a padded crop (or its mirror) of the input"
    assert len(shifts) > 60  # all 81 shifts are reachable; most show up in 512 draws
    assert all(abs(dy) <= 4 and abs(dx) <= 4 for dy, dx in shifts)
    assert 0.4 * n < flips < 0.6 * n
    # zero fill: an image shifted by the maximum has a zero border
    assert (out == 0).any()


def test_augmentation_is_seeded():
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    a = random_crop_flip(images, torch.Generator().manual_seed(7))
    b = random_crop_flip(images, torch.Generator().manual_seed(7))
    c = random_crop_flip(images, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.gpu
def test_augmentation_same_on_cpu_and_gpu():
    images = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8)
    cpu = random_crop_flip(images, torch.Generator().manual_seed(3))
    gpu = random_crop_flip(images.cuda(), torch.Generator().manual_seed(3))
    assert torch.equal(cpu, gpu.cpu())


def test_normalizations():
    images = torch.randint(0, 256, (100, 3, 8, 8), dtype=torch.uint8)
    pixel = Normalize.fit(images, "pixel")
    assert pixel.mean.shape == (1, 3, 8, 8)
    torch.testing.assert_close(pixel(images).mean(0), torch.zeros(3, 8, 8), atol=1e-5, rtol=0)
    channel = Normalize.fit(images, "channel")
    y = channel(images)
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std((0, 2, 3)), torch.ones(3), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="valid choices: pixel, channel"):
        Normalize.fit(images, "zca")


def test_loader_order_and_resume_position():
    images = (
        torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 3, 4, 4).contiguous()
    )
    labels = torch.arange(100)
    loader = TensorLoader(images, labels, 10, lambda x: x.float(), train=True, seed=1, pad=0)
    assert len(loader) == 10
    epoch0 = [y for _, y in loader.batches(0)]
    assert sorted(torch.cat(epoch0).tolist()) == list(range(100))  # a permutation
    assert [y.tolist() for _, y in loader.batches(0, start=4)] == [y.tolist() for y in epoch0[4:]]
    assert not torch.equal(torch.cat(epoch0), torch.cat([y for _, y in loader.batches(1)]))
    test = TensorLoader(images, labels, 30, lambda x: x.float(), train=False)
    assert len(test) == 4 and torch.equal(torch.cat([y for _, y in test]), labels)


def test_loader_augmentation_follows_the_batch_seed_contract():
    """Batch b of epoch e is augmented with crop_flip_params(B, seeded_generator(seed, e, b)),
    whatever the start position and process count (the resume and DDP guarantees)."""
    from reslab.data.loaders import seeded_generator
    from reslab.data.transforms import crop_flip, crop_flip_params

    images = torch.randint(0, 256, (96, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(96)
    loader = TensorLoader(images, labels, 16, lambda x: x, train=True, seed=5)
    order = loader.order(2)
    expected = [
        crop_flip(
            images[order[b * 16 : (b + 1) * 16]], *crop_flip_params(16, seeded_generator(5, 2, b))
        )
        for b in range(len(loader))
    ]
    assert all(torch.equal(x, e) for (x, _), e in zip(loader.batches(2), expected, strict=True))
    assert all(
        torch.equal(x, e)
        for (x, _), e in zip(loader.batches(2, start=3), expected[3:], strict=True)
    )
    halves = [
        TensorLoader(images, labels, 16, lambda x: x, train=True, seed=5, shard=(r, 2))
        for r in (0, 1)
    ]
    for (a, _), (b, _), e in zip(halves[0].batches(2), halves[1].batches(2), expected, strict=True):
        assert torch.equal(torch.cat([a, b]), e)
