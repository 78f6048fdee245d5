"""ImageNet-style pipeline on the real Imagenette validation images: counts, views, corrupt files."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from reslab.data.decode import CorruptImageError, decode
from reslab.data.imagefolder import ImageFolder, ImageFolderLoader, imagenet_normalize, scan_folder
from reslab.data.transforms import Lighting
from reslab.data.views import CenterCrop, ScaleAugment, TenCrop, resize_shorter
from reslab.engine.evaluate import evaluate, multiscale_probs
from reslab.models import create_model


@pytest.fixture(scope="module")
def imagenette(data_dir):
    root = data_dir / "imagenette" / "val"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    return root


@pytest.fixture
def small_folder(imagenette, tmp_path):
    """4 real images of each of 3 classes."""
    for cls in sorted(p.name for p in imagenette.iterdir())[:3]:
        (tmp_path / cls).mkdir()
        for f in sorted((imagenette / cls).iterdir())[:4]:
            shutil.copy(f, tmp_path / cls / f.name)
    return tmp_path


def test_imagenette_counts(imagenette):
    classes, samples = scan_folder(imagenette)
    assert len(classes) == 10 and classes[0] == "n01440764"
    assert len(samples) == 3925
    assert {label for _, label in samples} == set(range(10))


def test_greyscale_and_cmyk_become_rgb(tmp_path):
    arr = (np.random.default_rng(0).random((40, 60, 3)) * 255).astype("uint8")
    for mode in ("L", "CMYK", "RGB"):
        path = tmp_path / f"{mode}.jpg"
        Image.fromarray(arr).convert(mode).save(path)
        image = decode(path)
        assert image.shape == (3, 40, 60) and image.dtype == torch.uint8
    grey = decode(tmp_path / "L.jpg")
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])


def test_resize_shorter_and_scale_augment():
    image = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    assert resize_shorter(image, 256).shape == (3, 256, 341)
    assert resize_shorter(image.transpose(1, 2), 480).shape == (3, 640, 480)
    aug = ScaleAugment()
    for _ in range(20):
        assert aug(image).shape == (3, 224, 224)
    assert CenterCrop()(image).shape == (3, 224, 224)
    with pytest.raises(ValueError, match="crop <= smin <= smax"):
        ScaleAugment(smin=200, smax=100)


def test_ten_crop_has_corners_centre_and_mirrors(imagenette):
    _, samples = scan_folder(imagenette)
    image = decode(samples[0][0])
    views = TenCrop()(image)
    assert views.shape == (10, 3, 224, 224)
    originals, mirrored = views[:5], views[5:]
    assert not torch.equal(originals[0], originals[1])  # distinct corners
    for view in originals:  # every original view has its mirror image among the last five
        assert any(torch.equal(view.flip(-1), m) for m in mirrored)
    resized = resize_shorter(image, 256)
    assert torch.equal(views[0], resized[:, :224, :224])  # top-left corner


def test_multiscale_returns_averaged_probabilities(imagenette):
    _, samples = scan_folder(imagenette)
    model = create_model("resnet18", num_classes=10).eval()
    probs = multiscale_probs(
        model, decode(samples[0][0]), imagenet_normalize(), sizes=(224, 256, 384)
    )
    assert probs.shape == (10,)
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-5)
    single = multiscale_probs(model, decode(samples[0][0]), imagenet_normalize(), sizes=(224,))
    assert single.shape == (10,) and not torch.allclose(single, probs)


def test_loaders_batch_real_images(small_folder):
    train = ImageFolderLoader(
        ImageFolder(small_folder, ScaleAugment()), 4, imagenet_normalize(), train=True, workers=2
    )
    batches = list(train)
    assert len(batches) == 3 and all(
        x.shape == (4, 3, 224, 224) and x.dtype == torch.float32 for x, _ in batches
    )
    tencrop = ImageFolderLoader(
        ImageFolder(small_folder, TenCrop()), 5, imagenet_normalize(), train=False, workers=0
    )
    views, labels = next(iter(tencrop))
    assert views.shape == (5, 10, 3, 224, 224) and labels.shape == (5,)
    model = create_model("resnet18", num_classes=3)
    result = evaluate(model, tencrop)
    assert result["images"] == 12 and 0 <= result["error"] <= 100


def test_corrupt_jpeg_is_reported_by_name(small_folder):
    victim = sorted((small_folder / sorted(p.name for p in small_folder.iterdir())[1]).iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:300])  # truncated
    dataset = ImageFolder(small_folder, CenterCrop())
    with pytest.raises(CorruptImageError, match=victim.name):
        for i in range(len(dataset)):
            dataset[i]
    skipping = ImageFolderLoader(
        ImageFolder(small_folder, CenterCrop(), on_error="skip"),
        4,
        imagenet_normalize(),
        train=False,
        workers=2,
    )
    n = sum(len(y) for _, y in skipping)
    assert n == 11 and skipping.skipped == [str(victim)]
    with pytest.raises(ValueError, match="valid choices: raise, skip"):
        ImageFolder(small_folder, on_error="ignore")


def test_missing_folder_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_folder(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no class sub-folders"):
        scan_folder(tmp_path)


def test_lighting_noise_statistics():
    lighting = Lighting(0.1)
    offsets = lighting.offsets(20000, torch.Generator().manual_seed(0))
    expected = (lighting.eigvec * lighting.eigval**2 * 0.01) @ lighting.eigvec.T
    torch.testing.assert_close(torch.cov(offsets.T), expected, atol=2e-5, rtol=0.1)
    x = torch.rand(4, 3, 8, 8)
    assert torch.equal(Lighting(0.0)(x), x)
    # one offset per image, the same at every pixel
    y = lighting(x, torch.Generator().manual_seed(1)) - x
    assert torch.allclose(y, y[:, :, :1, :1].expand_as(y))


def test_pixel_mean_normalisation(small_folder):
    norm = imagenet_normalize("pixel", ImageFolder(small_folder), limit=6)
    assert norm.mean.shape == (1, 3, 224, 224) and 0.1 < norm.mean.mean().item() < 0.9
    assert norm(torch.zeros(2, 3, 320, 256, dtype=torch.uint8)).shape == (
        2,
        3,
        320,
        256,
    )  # any size
    with pytest.raises(ValueError, match="needs the training dataset"):
        imagenet_normalize("pixel")


@pytest.mark.parametrize("empty", ["aaa_first", "zzz_last"])
def test_an_empty_class_folder_is_named(small_folder, empty):
    """Sorting first it would shift every label; sorting last it would add a class the data never
    shows: either way it is an error naming the folder."""
    from reslab.errors import DataError

    (small_folder / empty).mkdir()
    (small_folder / empty / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=rf"class folder {small_folder / empty} holds no"):
        ImageFolder(small_folder)


def test_unreadable_and_oversized_images_are_named(tmp_path):
    import struct
    import zlib

    empty = tmp_path / "empty.JPEG"
    empty.write_bytes(b"")
    with pytest.raises(CorruptImageError, match=r"cannot read image .*empty\.JPEG"):
        decode(empty)
    # a PNG whose header announces 20000 x 20000 pixels: refused before anything is decoded
    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(header)) + b"IHDR" + header
    chunk += struct.pack(">I", zlib.crc32(b"IHDR" + header))
    idat = b"\x00" * 16
    chunk += struct.pack(">I", len(idat)) + b"IDAT" + idat
    chunk += struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    huge = tmp_path / "huge.png"
    huge.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk)
    with pytest.raises(CorruptImageError, match=r"huge\.png is image size \(400000000 pixels\), above reslab's limit of 89"):  # fmt: skip
        decode(huge)
    # below PIL's own bomb check, reslab's limit still applies
    import reslab.data.decode as decoding

    Image.new("RGB", (64, 48)).save(tmp_path / "small.png")
    decoding.MAX_PIXELS, limit = 1000, decoding.MAX_PIXELS
    try:
        with pytest.raises(CorruptImageError, match=r"small\.png is 64x48 \(0 megapixels\), above"):
            decode(tmp_path / "small.png")
    finally:
        decoding.MAX_PIXELS = limit


def test_the_pixel_mean_is_fitted_once_with_the_configured_sizes(
    small_folder, tmp_path_factory, monkeypatch
):
    cache = tmp_path_factory.mktemp("run") / "pixel_mean.safetensors"
    norm = imagenet_normalize("pixel", ImageFolder(small_folder), resize=128, crop=112, cache=cache)
    assert norm.mean.shape == (1, 3, 112, 112) and cache.is_file()

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(ImageFolder, "__getitem__", no_decoding)
    again = imagenet_normalize(
        "pixel", ImageFolder(small_folder), resize=128, crop=112, cache=cache
    )
    assert torch.equal(again.mean, norm.mean)
    monkeypatch.undo()
    other = imagenet_normalize("pixel", ImageFolder(small_folder), resize=128, crop=96, cache=cache)
    assert other.mean.shape == (1, 3, 96, 96)  # other inputs: fitted anew
