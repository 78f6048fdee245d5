"""Image files decoded into one 8-bit RGB frame, or refused by name.

    RESLAB_DATA=../shared/data uv run python -c "from reslab.data.decode import decode; import glob; print(decode(sorted(glob.glob('../shared/data/imagenette/val/*/*'))[0]).shape)"

:func:`decode` reads a file with ``torchvision.io`` (in ``DataLoader`` workers, or once for an
image folder held in memory): greyscale, palette, alpha and CMYK become RGB, 16-bit PNGs 8-bit,
animated GIFs their first frame. A file that cannot be decoded, or whose header announces more
than :data:`MAX_PIXELS` pixels (decoding it would take gigabytes), raises
:class:`CorruptImageError` naming it.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.io import ImageReadMode, decode_image, read_file

from reslab.errors import DataError

# The largest image decoded (PIL's own default limit, about 9459 x 9459): a 20000 x 20000 JPEG
# would need 1.2 GB as uint8 before any resizing. Larger files are refused as corrupt.
MAX_PIXELS = 89_478_485


class CorruptImageError(DataError):
    """An image file that cannot be read or decoded; the message names the file."""


def decode(path: str | Path) -> torch.Tensor:
    """An image file as uint8 RGB 3 x H x W: one frame (an animated GIF or WebP gives its first),
    8 bits per channel (16-bit PNGs rescaled, rounded), greyscale, palette, alpha and CMYK made RGB
    (alpha dropped). :class:`CorruptImageError` (naming the file) for a file that is no image, is
    damaged, has more than :data:`MAX_PIXELS` pixels, or decodes to anything else."""
    from PIL import Image

    try:
        data = read_file(str(path))
        with Image.open(io.BytesIO(data.numpy().tobytes())) as header:  # reads the header only
            size = "{}x{} ({:.0f} megapixels)".format(*header.size, math.prod(header.size) / 1e6)
            too_large = math.prod(header.size) > MAX_PIXELS
            # torchvision decodes every frame of a GIF and refuses animated WebP (an APNG it
            # decodes as its first frame)
            animated = header.format in ("GIF", "WEBP") and getattr(header, "is_animated", False)
    except Image.DecompressionBombError as err:  # PIL's own check, at twice its limit
        size, too_large = str(err).split(" exceeds")[0].lower(), True
    except (RuntimeError, OSError, ValueError) as err:
        raise CorruptImageError(f"cannot read image {path}: {str(err).splitlines()[0]}") from None
    if too_large:
        raise CorruptImageError(
            f"image {path} is {size}, above reslab's limit of {MAX_PIXELS / 1e6:.0f} megapixels "
            "(reslab.data.decode.MAX_PIXELS); downscale it"
        )
    try:
        image = _first_frame(data) if animated else decode_image(data, mode=ImageReadMode.RGB)
    except (RuntimeError, OSError, ValueError) as err:
        raise CorruptImageError(f"cannot decode image {path}: {str(err).splitlines()[0]}") from None
    if image.dtype == torch.uint16:  # a 16-bit PNG, 0..65535: to 0..255, rounded
        image = ((image.int() * 255 + 65535 // 2) // 65535).to(torch.uint8)
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise CorruptImageError(
            f"image {path} decodes to {image.dtype} {tuple(image.shape)}, not one 8-bit RGB "
            "frame; save it as an 8-bit RGB PNG or JPEG"
        )
    return image


def _first_frame(data: torch.Tensor) -> torch.Tensor:
    """The first frame of an animated GIF or WebP (its encoded bytes, uint8 1-d) as uint8 RGB
    3 x H x W, decoded by PIL."""
    from PIL import Image

    with Image.open(io.BytesIO(data.numpy().tobytes())) as image:
        image.seek(0)
        return TF.pil_to_tensor(image.convert("RGB"))
