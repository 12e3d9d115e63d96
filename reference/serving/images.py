"""PNG uploads to model rows: an 8x8 digit as 64 grey levels scaled to the digits range
[0, 16]. Larger images are downscaled; anything that is not a PNG is refused."""

from __future__ import annotations

import io

import numpy as np

SIDE, DIGITS_MAX = 8, 16.0
MAX_PIXELS = 4096 * 4096  # refuse decompression bombs before decoding the pixels


class NotAnImage(ValueError):
    """The upload is not a decodable PNG image."""


def png_to_row(data: bytes) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "PNG":
                raise NotAnImage(f"expected a PNG image, got {image.format or 'an unknown format'}")
            if image.width * image.height > MAX_PIXELS:
                raise NotAnImage(f"image of {image.width}x{image.height} pixels is larger than allowed")
            grey = image.convert("L")
            if grey.size != (SIDE, SIDE):
                grey = grey.resize((SIDE, SIDE), Image.Resampling.BILINEAR)
            pixels = np.asarray(grey, dtype=np.float32)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise NotAnImage(f"upload is not a decodable PNG image ({exc})") from None
    return (pixels.reshape(-1) * (DIGITS_MAX / 255.0)).astype(np.float32)


def row_to_png(row: np.ndarray) -> bytes:
    """The inverse, for clients and tests: 64 values in [0, 16] as an 8x8 greyscale PNG."""
    from PIL import Image

    pixels = np.clip(np.rint(np.asarray(row, dtype=np.float64) * (255.0 / DIGITS_MAX)), 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8).reshape(SIDE, SIDE), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()
