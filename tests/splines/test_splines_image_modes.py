"""Images of every common mode and format come back with the ink right and the rest intact."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from splines.drawing import DrawOptions
from splines.render import RenderedImage, render_spline
from splines.tck import parse_curves

pytestmark = pytest.mark.one_pass

MAGENTA = (255, 0, 255, 255)
SIZE = (120, 80)
# A horizontal segment across the middle row: the pixel (60, 40) is fully covered.
LINE = parse_curves([[0, 0, 1, 1], [[10, 110], [40, 40]], 1])


def encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def render(
    data: bytes,
    color: tuple[int, int, int, int] = MAGENTA,
    width: float = 5,
    requested_format: str = "same",
) -> RenderedImage:
    return render_spline(data, LINE, DrawOptions(color=color, width=width), requested_format)


def pixel(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    """A pixel's bands (every mode checked here has several)."""
    value = image.getpixel(xy)
    assert isinstance(value, tuple), value
    return value


def decoded(rendered: RenderedImage) -> Image.Image:
    image = Image.open(io.BytesIO(rendered.data))
    image.load()
    return image


def test_rgb_png_stays_rgb_png_with_the_ink_exact_on_the_line() -> None:
    rendered = render(encode(Image.new("RGB", SIZE, (10, 120, 30)), "PNG"))
    image = decoded(rendered)
    assert (rendered.format, rendered.content_type, image.mode) == ("PNG", "image/png", "RGB")
    assert image.getpixel((60, 40)) == (255, 0, 255)
    assert image.getpixel((60, 10)) == (10, 120, 30)


def test_rgba_keeps_its_alpha_and_the_ink_blends_instead_of_replacing_it() -> None:
    source = Image.new("RGBA", SIZE, (0, 0, 0, 0))
    source.paste((0, 0, 255, 128), (0, 0, 120, 20))
    image = decoded(render(encode(source, "PNG"), width=4))  # rows 38..42, 42 half covered
    assert image.mode == "RGBA"
    assert image.getpixel((60, 40)) == (255, 0, 255, 255)
    assert image.getpixel((60, 10)) == (0, 0, 255, 128)
    assert image.getpixel((60, 70)) == (0, 0, 0, 0)
    # An anti-aliased edge pixel over transparency keeps the ink's colour, not a darker one.
    edge = pixel(image, (60, 42))
    assert 0 < edge[3] < 255 and edge[:3] == (255, 0, 255)


def test_greyscale_takes_colour_ink_as_rgb_and_grey_ink_as_greyscale() -> None:
    data = encode(Image.new("L", SIZE, 90), "PNG")
    coloured = decoded(render(data))
    assert coloured.mode == "RGB" and coloured.getpixel((60, 40)) == (255, 0, 255)
    assert coloured.getpixel((60, 10)) == (90, 90, 90)
    grey = decoded(render(data, color=(255, 255, 255, 255)))
    assert grey.mode == "L" and grey.getpixel((60, 40)) == 255 and grey.getpixel((60, 10)) == 90


def test_palette_image_is_converted_so_the_ink_is_not_snapped_to_the_palette() -> None:
    source = Image.new("RGB", SIZE, (200, 180, 20)).convert("P", palette=Image.Palette.ADAPTIVE)
    for image_format in ("PNG", "GIF"):
        rendered = render(encode(source, image_format))
        image = decoded(rendered).convert("RGB")
        assert rendered.format == image_format
        assert image.getpixel((60, 40)) == (255, 0, 255)
        assert image.getpixel((60, 10)) == (200, 180, 20)


def test_cmyk_jpeg_stays_cmyk_with_the_ink_converted_not_black() -> None:
    source = Image.new("CMYK", SIZE, (0, 0, 0, 0))  # white paper
    rendered = render(encode(source, "JPEG", quality=95))
    image = decoded(rendered)
    assert (rendered.format, image.mode) == ("JPEG", "CMYK")
    red, green, blue = pixel(image.convert("RGB"), (60, 40))
    assert red > 220 and green < 40 and blue > 220
    assert min(pixel(image.convert("RGB"), (60, 10))) > 240


def test_cmyk_asked_as_png_comes_back_rgb() -> None:
    rendered = render(encode(Image.new("CMYK", SIZE, (0, 0, 0, 0)), "JPEG"), requested_format="png")
    image = decoded(rendered)
    assert (rendered.content_type, image.mode) == ("image/png", "RGB")
    red, green, blue = pixel(image, (60, 40))
    assert red > 220 and green < 40 and blue > 220


def test_sixteen_bit_greyscale_is_scaled_not_turned_white() -> None:
    values = np.full((SIZE[1], SIZE[0]), 30000, dtype=np.uint16)
    values[:, :20] = 1000
    source = Image.fromarray(values)
    assert source.mode == "I;16"
    image = decoded(render(encode(source, "PNG"), color=(255, 255, 255, 255)))
    assert image.mode == "L"
    assert image.getpixel((60, 10)) == round(30000 / 257)
    assert image.getpixel((5, 10)) == round(1000 / 257)
    assert image.getpixel((60, 40)) == 255


def test_exif_orientation_is_applied_before_drawing() -> None:
    stored = Image.new("RGB", (SIZE[1], SIZE[0]), (40, 40, 40))  # 80 x 120 as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": shown as 120 x 80
    rendered = render(encode(stored, "JPEG", exif=exif.tobytes(), quality=95))
    image = decoded(rendered)
    assert image.size == SIZE
    assert image.getexif().get(0x0112) in (None, 1)
    red, green, blue = pixel(image, (60, 40))
    assert red > 220 and green < 50 and blue > 220
    assert max(pixel(image, (60, 10))) < 60


def test_jpeg_in_gives_high_quality_jpeg_out_without_chroma_subsampling() -> None:
    rendered = render(encode(Image.new("RGB", SIZE, (10, 120, 30)), "JPEG", quality=75))
    image = decoded(rendered)
    assert (rendered.format, rendered.content_type) == ("JPEG", "image/jpeg")
    assert JpegImagePlugin.get_sampling(image) == 0  # 4:4:4
    red, green, blue = pixel(image, (60, 40))
    assert red > 240 and green < 15 and blue > 240


def test_format_override_writes_the_format_asked_for() -> None:
    data = encode(Image.new("RGBA", SIZE, (10, 120, 30, 100)), "PNG")
    for requested, content_type, mode in (
        ("jpeg", "image/jpeg", "RGB"),
        ("webp", "image/webp", "RGBA"),
        ("png", "image/png", "RGBA"),
    ):
        rendered = render(data, requested_format=requested)
        image = decoded(rendered)
        assert (rendered.content_type, image.mode) == (content_type, mode)
        assert image.format == rendered.format
