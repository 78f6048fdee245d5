"""Every decodable image becomes one 8-bit RGB frame (16-bit PNGs, animated GIFs, palette, alpha,
greyscale, CMYK), checked against PIL on real CIFAR-10 and imagenette photos; ``reslab predict``
on such files, on a folder of unreadable files and on a detection run."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from reslab.cli import main
from reslab.data import decode as decoding
from reslab.data.decode import CorruptImageError, decode
from reslab.data.imagefolder import ImageFolder, collate
from reslab.data.views import CenterCrop


@pytest.fixture(scope="module")
def photos(data_dir) -> list[np.ndarray]:
    """Five CIFAR-10 test photos, 32 x 32 x 3 uint8."""
    from reslab.data.cifar import load_cifar10

    images, _ = load_cifar10(data_dir, "test")
    return [images[i].permute(1, 2, 0).numpy() for i in range(5)]


@pytest.fixture(scope="module")
def imagenette_photo(data_dir) -> Image.Image:
    files = sorted((data_dir / "imagenette" / "val").rglob("*.JPEG"))
    if not files:
        pytest.skip(f"imagenette not found under {data_dir}")
    with Image.open(files[0]) as image:
        return image.convert("RGB")


def write_png16(pixels: np.ndarray, path) -> None:
    """A 16-bit PNG of ``pixels`` (H x W x C uint16, C = 1, 2, 3 or 4), written by hand: PIL writes
    16 bits for greyscale only."""
    h, w, c = pixels.shape
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]  # grey, grey+alpha, RGB, RGBA
    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def to_16_bit(pixels: np.ndarray, seed: int = 0) -> np.ndarray:
    """``pixels`` (uint8) as 16-bit values whose nearest 8-bit value is the original: v * 257
    plus noise of less than half an 8-bit step."""
    noise = np.random.default_rng(seed).integers(-128, 128, pixels.shape)
    return np.clip(pixels.astype(np.int64) * 257 + noise, 0, 65535).astype(np.uint16)


def as_pil_rgb(path) -> np.ndarray:
    """PIL's own reading: the first frame converted to RGB, H x W x 3."""
    with Image.open(path) as image:
        image.seek(0)
        return np.asarray(image.convert("RGB"))


def as_hwc(image: torch.Tensor) -> np.ndarray:
    assert image.dtype == torch.uint8 and image.dim() == 3 and image.shape[0] == 3
    return image.permute(1, 2, 0).numpy()


@pytest.mark.parametrize("channels", ["RGB", "RGBA", "L", "LA"])
def test_a_16_bit_png_decodes_as_its_8_bit_copy(photos, tmp_path, channels):
    eight = np.asarray(Image.fromarray(photos[0]).convert(channels)).reshape(32, 32, -1)
    write_png16(to_16_bit(eight), tmp_path / "photo16.png")
    Image.fromarray(eight.squeeze(-1) if eight.shape[-1] == 1 else eight).save(
        tmp_path / "photo8.png"
    )
    image = decode(tmp_path / "photo16.png")
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    assert np.array_equal(as_hwc(image), as_pil_rgb(tmp_path / "photo8.png"))


@pytest.mark.parametrize("name", ["anim.gif", "anim.jpg", "anim.webp"])
def test_an_animated_image_decodes_to_its_first_frame(photos, tmp_path, name):
    """Named .jpg or not: GIF and WebP go by their content."""
    frames = [Image.fromarray(p) for p in photos]
    path = tmp_path / name
    fmt = "WEBP" if name.endswith(".webp") else "GIF"
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:], duration=100)
    with Image.open(path) as image:
        assert image.is_animated and image.n_frames == 5
    first = as_pil_rgb(path)
    assert np.array_equal(as_hwc(decode(path)), first)
    if fmt == "GIF":  # a palette of the first photo: close to it
        assert np.abs(first.astype(int) - photos[0]).mean() < 8


def _palette_alpha(rgb: Image.Image) -> Image.Image:
    """Palette colours with per-entry alpha (PNG's tRNS): half the picture transparent."""
    rgba = np.asarray(rgb.convert("RGBA")).copy()
    rgba[: rgba.shape[0] // 2, :, 3] = 0
    rgba[rgba.shape[0] // 2 :, :, 3] = 128
    return Image.fromarray(rgba).quantize(64)


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("palette.png", lambda im: im.convert("P")),
        ("palette_transparent_index.png", lambda im: im.convert("P")),
        ("palette_alpha.png", _palette_alpha),
        ("grey_alpha.png", lambda im: im.convert("LA")),
        ("grey.png", lambda im: im.convert("L")),
        ("grey.jpg", lambda im: im.convert("L")),
        ("bilevel.png", lambda im: im.convert("1")),
        ("cmyk.jpg", lambda im: im.convert("CMYK")),
        ("rgba.png", lambda im: im.convert("RGBA")),
    ],
)
@pytest.mark.filterwarnings("ignore:Palette images with Transparency")
def test_every_mode_becomes_rgb_as_pil_converts_it(photos, imagenette_photo, tmp_path, name, make):
    for i, source in enumerate([Image.fromarray(photos[1]), imagenette_photo]):
        path = tmp_path / f"{i}-{name}"
        options = {"transparency": 0} if "transparent_index" in name else {}
        make(source).save(path, **options)
        image = decode(path)
        assert image.shape == (3, source.height, source.width)
        assert np.array_equal(as_hwc(image), as_pil_rgb(path)), path.name


def test_anything_but_one_rgb_frame_is_refused_by_name(tmp_path, photos, monkeypatch):
    """Whatever a decoder returns, ``decode`` gives 3 x H x W uint8 or names the file, which a
    training folder with ``data.skip_corrupt`` leaves out."""
    (tmp_path / "cat").mkdir()
    Image.fromarray(photos[0]).save(tmp_path / "cat" / "x.png")
    frames = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    monkeypatch.setattr(decoding, "decode_image", lambda data, mode: frames)
    with pytest.raises(CorruptImageError, match=r"x\.png decodes to torch.uint8 \(2, 3, 32, 32\), not one 8-bit RGB frame"):  # fmt: skip
        decode(tmp_path / "cat" / "x.png")
    assert ImageFolder(tmp_path, on_error="skip")[0] == (None, 0, str(tmp_path / "cat" / "x.png"))


def odd_files(folder, photos) -> list[str]:
    """A 16-bit PNG, an animated GIF named .jpg and a CMYK JPEG in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    write_png16(to_16_bit(photos[0]), folder / "photo16.png")
    frames = [Image.fromarray(p) for p in photos]
    frames[0].save(folder / "anim.jpg", format="GIF", save_all=True, append_images=frames[1:])
    Image.fromarray(photos[2]).convert("CMYK").save(folder / "cmyk.jpg")
    return ["anim.jpg", "cmyk.jpg", "photo16.png"]


def test_a_training_folder_of_odd_images_batches(photos, tmp_path):
    for label in ("a", "b"):
        odd_files(tmp_path / label, photos)
    dataset = ImageFolder(tmp_path, CenterCrop(40, 32))
    images, labels, skipped = collate([dataset[i] for i in range(len(dataset))])
    assert images.shape == (6, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.tolist() == [0, 0, 0, 1, 1, 1] and skipped == []


def test_predict_reads_a_16_bit_png_as_its_8_bit_copy(data_dir, photos, tmp_path, capsys):
    """The reported case: resnet20.cifar10 called a 16-bit frog "ship 100.0%"."""
    odd_files(tmp_path / "odd", photos)
    Image.fromarray(photos[0]).save(tmp_path / "photo8.png")
    assert main(["predict", "resnet20.cifar10", str(tmp_path / "photo8.png")]) == 0
    eight = capsys.readouterr().out.split(": ", 1)[1]
    assert main(["predict", "resnet20.cifar10", str(tmp_path / "odd" / "photo16.png")]) == 0
    assert capsys.readouterr().out.split(": ", 1)[1] == eight
    # a folder of them: every file predicted, none skipped
    assert main(["predict", "resnet20.cifar10", str(tmp_path / "odd"), "--topk", "1"]) == 0
    out, err = capsys.readouterr()
    names = [line.split(": ")[0].rsplit("/", 1)[1] for line in out.splitlines()]
    assert names == ["anim.jpg", "cmyk.jpg", "photo16.png"] and "skipped" not in err


def test_predict_on_a_folder_without_a_readable_image_is_an_error(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "empty.jpg").write_bytes(b"")
    (tmp_path / "images" / "notes.png").write_text("not an image")
    assert main(["predict", "resnet20.cifar10", str(tmp_path / "images")]) == 2
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == "" and len(lines) == 3
    assert lines[0].startswith(f"reslab predict: skipped {tmp_path / 'images' / 'empty.jpg'}: ")
    assert lines[1].startswith(f"reslab predict: skipped {tmp_path / 'images' / 'notes.png'}: ")
    assert lines[2] == (
        f"reslab predict: error: no image in {tmp_path / 'images'} could be read: all 2 "
        ".jpg/.jpeg/.png files were skipped as unreadable"
    )


def test_predict_on_a_detection_run_names_detect_eval(photos, tmp_path, capsys):
    """The run directory as `reslab detect train` writes it (config.yaml, summary.json and a
    model.safetensors saved by its ``save_detector``), with a stand-in network."""
    import yaml

    from reslab.detection.train import DetConfig, save_detector

    run = tmp_path / "det"
    run.mkdir()
    cfg = DetConfig()
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    (run / "summary.json").write_text('{"status": "finished"}')
    save_detector(torch.nn.Linear(2, 2), run / "model.safetensors", cfg, ["background", "cat"])
    Image.fromarray(photos[0]).save(tmp_path / "x.png")
    for weights in (run, run / "model.safetensors"):
        assert main(["predict", str(weights), str(tmp_path / "x.png")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{weights} is a detection run" in err
        assert f"evaluate it with `reslab detect eval {weights}`" in err
