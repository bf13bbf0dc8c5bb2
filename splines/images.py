"""Reading an uploaded image safely and writing the result in the format asked for.

Decoding is limited to a few common formats (Pillow would otherwise try dozens, some
of which run external programs), refuses images over `MAX_IMAGE_PIXELS` before decoding
them (decompression bombs), and applies the EXIF orientation so that curve coordinates
mean what the user saw. Encoding picks settings that suit thin coloured lines: JPEG at
high quality without chroma subsampling, PNG with fast compression.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# About 50 megapixels (e.g. 8660 x 5773), far above any annotated frame. Set explicitly on
# Pillow as well, so that nothing else in the process decodes a bigger image unnoticed
# (Pillow raises DecompressionBombError at twice this and warns above it).
MAX_IMAGE_PIXELS = 50_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

INPUT_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
OUTPUT_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
CONTENT_TYPES = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}
EXTENSIONS = {
    "PNG": "png",
    "JPEG": "jpg",
    "WEBP": "webp",
    "GIF": "gif",
    "BMP": "bmp",
    "TIFF": "tif",
}
# Modes each output format can hold; anything else is converted before saving.
FORMAT_MODES = {
    "PNG": {"1", "L", "LA", "P", "RGB", "RGBA", "I;16"},
    "JPEG": {"L", "RGB", "CMYK"},
    "WEBP": {"RGB", "RGBA"},
    "GIF": {"L", "P", "RGB", "RGBA"},
    "BMP": {"1", "L", "P", "RGB", "RGBA"},
    "TIFF": {"1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16"},
}


class ImageInputError(ValueError):
    """An upload that is not a usable image; `status` is 400, or 413 when it is too big."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class DecodedImage:
    image: Image.Image
    format: str
    icc_profile: bytes | None


def decode_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> DecodedImage:
    """Open, size-check, fully decode and orient an uploaded image."""
    if not data:
        raise ImageInputError("image is empty.")
    try:
        image = Image.open(io.BytesIO(data), formats=INPUT_FORMATS)
    except UnidentifiedImageError:
        raise ImageInputError(_unreadable_message(data)) from None
    except Image.DecompressionBombError:
        raise ImageInputError(
            _too_many_pixels(f"image has over {2 * MAX_IMAGE_PIXELS} pixels", max_pixels),
            status=413,
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        # A header cut short or corrupt (e.g. a JPEG truncated inside a marker segment):
        # Pillow raises while reading it, before any pixel is decoded.
        raise ImageInputError(f"image header is truncated or corrupt ({exc}).") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageInputError(
            _too_many_pixels(f"image is {width} x {height} = {width * height} pixels", max_pixels),
            status=413,
        )
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageInputError(
            f"image could not be decoded (truncated or corrupt {image.format}: {exc})."
        ) from None
    source_format = image.format or "PNG"
    icc_profile = image.info.get("icc_profile")
    try:
        ImageOps.exif_transpose(image, in_place=True)  # a no-op, not a copy, when upright
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, KeyError) as exc:
        raise ImageInputError(f"image has corrupt EXIF metadata ({exc}).") from None
    return DecodedImage(image, source_format, icc_profile)


def _too_many_pixels(detail: str, max_pixels: int) -> str:
    return f"{detail}; at most {max_pixels} pixels are accepted."


def _unreadable_message(data: bytes) -> str:
    """Tell an image in a format we do not take from something that is no image at all."""
    try:
        with Image.open(io.BytesIO(data)) as other:  # header only: nothing is decoded
            found = other.format
    except Exception:  # noqa: BLE001 - any failure here just means "not an image"
        found = None
    accepted = ", ".join(INPUT_FORMATS)
    if found:
        return f"image is in {found} format, which is not supported; send one of {accepted}."
    return f"image is not an image file (or not one of {accepted})."


def to_eight_bit(image: Image.Image) -> Image.Image:
    """Scale 16- and 32-bit greyscale to 8 bits (Pillow's own conversion clips to white)."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8), "L")
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 if np.nanmax(values, initial=0.0) <= 1.0 else 1.0
        values = np.nan_to_num(values * scale)
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
    return image


def _for_format(image: Image.Image, image_format: str) -> Image.Image:
    if image.mode in FORMAT_MODES[image_format]:
        return image
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La")
    if has_alpha and "RGBA" in FORMAT_MODES[image_format]:
        return image.convert("RGBA")
    if has_alpha:  # JPEG: flatten onto white rather than letting transparent pixels turn black
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def colour_space(mode: str) -> str:
    """The colour space an ICC profile for an image of this mode would describe."""
    if mode == "CMYK":
        return "CMYK"
    if mode in ("1", "L", "LA", "La", "I", "F") or mode.startswith("I;16"):
        return "GRAY"
    return "RGB"


def encode_image(
    image: Image.Image, image_format: str, icc_profile: bytes | None = None, source_mode: str = ""
) -> bytes:
    """Save in `image_format` (a Pillow format name) with settings that keep thin lines crisp."""
    image = _for_format(image, image_format)
    options: dict[str, object] = {}
    # An ICC profile describes one colour space; keep it only if the output is still in it.
    if icc_profile and colour_space(image.mode) == colour_space(source_mode or image.mode):
        options["icc_profile"] = icc_profile
    if image_format == "JPEG":
        options.update(quality=95, subsampling=0)  # 4:4:4: subsampling smears thin colour
    elif image_format == "PNG":
        options.update(compress_level=1)  # the default level costs ~300 ms on a 1024^2 photo
    elif image_format == "WEBP":
        options.update(quality=92, method=3)
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def output_format(requested: str, source_format: str) -> str:
    """The Pillow format to write: `same` keeps the input's."""
    if requested == "same":
        return source_format if source_format in FORMAT_MODES else "PNG"
    return OUTPUT_FORMATS[requested]
