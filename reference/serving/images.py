"""PNG uploads to model rows: an 8x8 digit as 64 grey levels scaled to the digits range
[0, 16]. Larger images are downscaled; anything that is not a PNG is refused, and so is
any image whose declared size is over MAX_PIXELS or whose text or colour-profile chunks
inflate past Pillow's limits (decompression bombs), before their pixels are decoded."""

from __future__ import annotations

import io
import struct
import zlib
from functools import cache

import numpy as np

SIDE, DIGITS_MAX = 8, 16.0
MAX_PIXELS = 1 << 20  # a 1024x1024 upload; an 8x8 digit needs 64


class NotAnImage(ValueError):
    """The upload is not a decodable PNG image."""


class TooManyPixels(NotAnImage):
    """The image declares more pixels than allowed, or a chunk inflates past the limit."""


def png_to_row(data: bytes) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "PNG":
                raise NotAnImage(f"expected a PNG image, got {image.format or 'an unknown format'}")
            if image.width * image.height > MAX_PIXELS:
                raise TooManyPixels(f"image of {image.width}x{image.height} pixels is over the limit of "
                                    f"{MAX_PIXELS} pixels")
            grey = image.convert("L")
            if grey.size != (SIDE, SIDE):
                # reducing_gap: shrink by whole factors first; a plain 1024->8 bilinear pass holds the GIL ~10 ms
                grey = grey.resize((SIDE, SIDE), Image.Resampling.BILINEAR, reducing_gap=3.0)
            pixels = np.asarray(grey, dtype=np.float32)
    except Image.DecompressionBombError as exc:  # declared size far beyond Pillow's own limit
        raise TooManyPixels(f"image refused as a decompression bomb ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError) as exc:
        raise NotAnImage(f"upload is not a decodable PNG image ({exc})") from None
    except ValueError as exc:  # Pillow: a zTXt/iCCP chunk that inflates past its limit
        if isinstance(exc, NotAnImage):
            raise
        raise TooManyPixels(f"a compressed chunk of the image inflates past the limit ({exc})") from None
    return (pixels.reshape(-1) * (DIGITS_MAX / 255.0)).astype(np.float32)


def row_to_png(row: np.ndarray) -> bytes:
    """The inverse, for clients and tests: 64 values in [0, 16] as an 8x8 greyscale PNG."""
    from PIL import Image

    pixels = np.clip(np.rint(np.asarray(row, dtype=np.float64) * (255.0 / DIGITS_MAX)), 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8).reshape(SIDE, SIDE), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, pixels: bytes, extra: bytes = b"") -> bytes:
    """A greyscale 8-bit PNG whose IDAT holds `pixels` (filter bytes included), with
    `extra` chunks before it."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + extra
            + _chunk(b"IDAT", zlib.compress(pixels, 9)) + _chunk(b"IEND", b""))


@cache
def bombs() -> dict[str, bytes]:
    """Small PNGs that cost a careless server seconds or gigabytes: a 20000x20000 header
    over a few bytes of data, a 1x16M-pixel image, and zTXt / iCCP chunks inflating to
    8 MB (Pillow stops at 1 MB). Every one must be refused with a 4xx, quickly."""
    inflating = zlib.compress(b"\0" * (8 << 20), 9)
    tiny = b"\0" * (SIDE + 1) * SIDE
    return {
        "PNG declaring 20000x20000 pixels": _png(20000, 20000, b"\0" * 8),
        "PNG of 1x16M pixels": _png(16_000_000, 1, b"\0" * 16_000_001),
        "PNG with a zTXt bomb": _png(SIDE, SIDE, tiny, _chunk(b"zTXt", b"Comment\0\0" + inflating)),
        "PNG with an iCCP bomb": _png(SIDE, SIDE, tiny, _chunk(b"iCCP", b"profile\0\0" + inflating)),
    }
