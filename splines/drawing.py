"""Drawing curves on a Pillow image: clip, rasterise a coverage mask, then ink it per mode.

The stroke is rasterised by Anti-Grain Geometry (through `aggdraw`) into an 8-bit coverage
mask: the whole polyline is one path, so its joints are neither doubled nor missing, and
the edge pixels get their exact area coverage (the same rasteriser as matplotlib's Agg
backend). AGG strokes with butt ends; round ends are discs at the curve's ends. The mask
covers only the curve's bounding box, and the ink is then applied in a way that suits the
image's mode: painted through the mask for RGB, L and CMYK (with the colour converted to
CMYK first, which would otherwise come out black), alpha-composited from an overlay for
images with transparency (drawing directly would replace their alpha).

Coordinates are pixels with the origin at the top-left and y downwards; the point
`(x, y) = (3, 4)` is the centre of the pixel in column 3, row 4.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import aggdraw
import numpy as np
from PIL import Image, ImageColor

from .evaluation import knot_points, sample_curve
from .images import to_eight_bit
from .tck import SplineInputError, Tck

DEFAULT_COLOR = "#ff00ff"
MAX_WIDTH = 1000.0
# Control points may lie this many image sizes beyond the image's edges; further away is
# surely a unit or layout mistake, and would only cost samples that are clipped anyway.
COORDINATE_MARGIN = 8

Rgba = tuple[int, int, int, int]
Box = tuple[int, int, int, int]


def parse_color(value: str) -> Rgba:
    """A CSS colour (`#f0c`, `#ff00cc`, `#ff00cc80`, or a name like `red`) as RGBA."""
    try:
        color = ImageColor.getcolor(str(value).strip(), "RGBA")
    except (ValueError, AttributeError):
        raise SplineInputError(
            "color",
            f"color must be a CSS hex colour like #ff00ff or #f0f (#ff00ff80 with alpha); "
            f"got {value!r}.",
        ) from None
    assert isinstance(color, tuple)  # in mode RGBA always four channels
    red, green, blue, alpha = color
    return red, green, blue, alpha


def default_width(size: tuple[int, int]) -> float:
    """Four pixels on a 1024-pixel image, in proportion elsewhere, never under 1.5."""
    return max(1.5, max(size) / 256.0)


@dataclass(frozen=True)
class DrawOptions:
    color: Rgba = (255, 0, 255, 255)
    width: float | None = None
    show_control_points: bool = False
    show_knots: bool = False


@dataclass
class DrawReport:
    """What was drawn: the line width used and which curves lie entirely outside the image."""

    width: float
    curves: int
    outside: list[int] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return [
            f"curve {i} lies entirely outside the image; nothing was drawn for it."
            for i in self.outside
        ]


def check_coordinates(curves: Sequence[Tck], size: tuple[int, int]) -> None:
    """Refuse control points absurdly far from the image (the curve lies in their hull)."""
    width, height = size
    margin = COORDINATE_MARGIN * max(width, height)
    low = np.array([-margin, -margin])
    high = np.array([width + margin, height + margin])
    for index, curve in enumerate(curves):
        outside = np.flatnonzero(np.any((curve.points < low) | (curve.points > high), axis=1))
        if outside.size:
            i = int(outside[0])
            x, y = curve.points[i]
            which = f"curve {index}, " if len(curves) > 1 else ""
            raise SplineInputError(
                "c",
                f"{which}control point {i} = ({x:g}, {y:g}) is too far from the {width} x "
                f"{height} image: control points must lie within x {low[0]:g}..{high[0]:g} and "
                f"y {low[1]:g}..{high[1]:g} (is c in pixels of this image?).",
            )


def clip_polyline(points: np.ndarray, rect: tuple[float, float, float, float]) -> list[np.ndarray]:
    """The runs of consecutive segments whose bounding boxes meet `rect` (x0, y0, x1, y1)."""
    if len(points) == 1:
        points = np.vstack([points, points])
    x0, y0, x1, y1 = rect
    a, b = points[:-1], points[1:]
    keep = (
        (np.minimum(a[:, 0], b[:, 0]) <= x1)
        & (np.maximum(a[:, 0], b[:, 0]) >= x0)
        & (np.minimum(a[:, 1], b[:, 1]) <= y1)
        & (np.maximum(a[:, 1], b[:, 1]) >= y0)
    )
    edges = np.flatnonzero(np.diff(np.concatenate([[0], keep.astype(np.int8), [0]])))
    return [points[start : end + 1] for start, end in zip(edges[::2], edges[1::2], strict=True)]


@dataclass
class _Strokes:
    """Geometry to rasterise, in image pixel coordinates."""

    lines: list[tuple[np.ndarray, float]] = field(default_factory=list)
    discs: list[tuple[float, float, float]] = field(default_factory=list)
    rings: list[tuple[float, float, float, float]] = field(default_factory=list)
    squares: list[tuple[float, float, float]] = field(default_factory=list)

    def bounding_box(self, size: tuple[int, int]) -> Box | None:
        boxes = [(*line.min(axis=0) - w, *line.max(axis=0) + w) for line, w in self.lines]
        boxes += [(x - r, y - r, x + r, y + r) for x, y, r in self.discs + self.squares]
        boxes += [(x - r - w, y - r - w, x + r + w, y + r + w) for x, y, r, w in self.rings]
        if not boxes:
            return None
        array = np.array(boxes)
        left = max(0, int(np.floor(array[:, 0].min())) - 2)
        top = max(0, int(np.floor(array[:, 1].min())) - 2)
        right = min(size[0], int(np.ceil(array[:, 2].max())) + 2)
        bottom = min(size[1], int(np.ceil(array[:, 3].max())) + 2)
        if right <= left or bottom <= top:
            return None
        return left, top, right, bottom


def _rasterise(strokes: _Strokes, box: Box) -> np.ndarray:
    """The coverage of the box (rows x columns, uint8): 255 where fully covered.

    AGG draws into a buffer of its own, read once into numpy: drawing on a Pillow image
    would copy it into AGG and back, three passes over the box instead of one.
    Discs, squares and rings are rasterised each on a small canvas of their own and merged
    by taking the larger coverage: AGG would otherwise blend a disc's edge pixels over the
    stroke's as if they were independent shapes and darken the seam where they overlap.
    """
    left, top, right, bottom = box
    width, height = right - left, bottom - top
    # AGG puts pixel edges at integers; ours are pixel centres, hence the half pixel.
    dx, dy = 0.5 - left, 0.5 - top
    canvas = aggdraw.Draw("L", (width, height), 0)
    for line, line_width in strokes.lines:
        canvas.line((line + (dx, dy)).ravel().tolist(), aggdraw.Pen(255, line_width))
    coverage = np.frombuffer(canvas.tobytes(), dtype=np.uint8).reshape(height, width)
    # aggdraw grows filled shapes by a quarter pixel; a disc drawn as a circle of radius
    # r / 2 stroked r wide comes out at the exact size (its coverage error is a stroke's).
    shapes = [(x, y, r / 2.0, r, "ring") for x, y, r in strokes.discs]
    shapes += [(x, y, r - 0.25, 0.0, "square") for x, y, r in strokes.squares]
    shapes += [(x, y, r, ring, "ring") for x, y, r, ring in strokes.rings]
    if shapes:
        coverage = coverage.copy()  # frombuffer over bytes is read-only
    for x, y, r, ring, kind in shapes:
        reach = r + ring / 2.0 + 2.0
        x0, y0 = max(int(x + 0.5 - left - reach), 0), max(int(y + 0.5 - top - reach), 0)
        x1 = min(int(x + 0.5 - left + reach) + 1, width)
        y1 = min(int(y + 0.5 - top + reach) + 1, height)
        if x1 <= x0 or y1 <= y0:
            continue
        shape = aggdraw.Draw("L", (x1 - x0, y1 - y0), 0)
        cx, cy = x + dx - x0, y + dy - y0
        if kind == "ring":
            shape.ellipse((cx - r, cy - r, cx + r, cy + r), aggdraw.Pen(255, ring))
        else:
            shape.rectangle((cx - r, cy - r, cx + r, cy + r), aggdraw.Brush(255))
        patch = np.frombuffer(shape.tobytes(), dtype=np.uint8).reshape(y1 - y0, x1 - x0)
        region = coverage[y0:y1, x0:x1]
        np.maximum(region, patch, out=region)
    return coverage


def _working_image(image: Image.Image, color: Rgba) -> Image.Image:
    """The image in a mode that can show the ink: colour ink promotes greyscale to RGB."""
    grey_ink = color[0] == color[1] == color[2]
    image = to_eight_bit(image)
    mode = image.mode
    if mode == "1":
        image, mode = image.convert("L"), "L"
    if mode == "L":
        return image if grey_ink else image.convert("RGB")
    if mode == "P":
        return image.convert("RGBA" if image.has_transparency_data else "RGB")
    if mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        return image.convert("RGBA")
    if mode in ("RGB", "CMYK"):
        return image
    return image.convert("RGB")


# Height of the bands the mask is scanned in: taller bands mean fewer pastes (each costs
# tens of microseconds in Python) but more blank pixels blended along a slanted line.
INK_BAND = 32
# Inked runs in a band closer than this are pasted as one: a paste costs more than this
# many blank columns.
INK_GAP = 16


def _inked_strips(coverage: np.ndarray, band: int = INK_BAND, gap: int = INK_GAP) -> list[Box]:
    """Boxes (in mask coordinates) covering every inked pixel: per band of rows, the runs
    of columns where the mask is not zero.

    A curve is thin and its bounding box mostly empty; compositing only these strips
    makes the cost follow the curve's length instead of its bounding box's area. Scanning
    the mask (a reshape and a max, ~0.1 ms for a megapixel) finds the exact columns.
    """
    height, width = coverage.shape
    full, rows = height // band, -(-height // band)
    banded = np.zeros((rows, width + 2), dtype=np.int8)
    if full:
        banded[:full, 1:-1] = coverage[: full * band].reshape(full, band, width).max(axis=1) > 0
    if rows > full:
        banded[full, 1:-1] = coverage[full * band :].max(axis=0) > 0
    edges = np.diff(banded, axis=1)
    # Flat indices, row-major, so each end pairs with its start (`np.nonzero` over 2-D is
    # ten times slower than `flatnonzero` over a boolean array).
    stride = width + 1
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    start_rows = starts // stride
    start_columns, end_columns = starts - start_rows * stride, ends - start_rows * stride
    strips: list[Box] = []
    for row, start, end in zip(
        start_rows.tolist(), start_columns.tolist(), end_columns.tolist(), strict=True
    ):
        top = row * band
        if strips and strips[-1][1] == top and start - strips[-1][2] <= gap:
            strips[-1] = (strips[-1][0], top, end, strips[-1][3])
        else:
            strips.append((start, top, end, min(top + band, height)))
    return strips


def _apply_ink(
    image: Image.Image, coverage: np.ndarray, box: Box, strips: list[Box], color: Rgba
) -> None:
    red, green, blue, alpha = color
    height, width = coverage.shape
    # A read-only image over the same memory: no copy.
    mask = Image.frombuffer("L", (width, height), np.ascontiguousarray(coverage), "raw", "L", 0, 1)
    if alpha < 255:
        mask = mask.point([round(v * alpha / 255) for v in range(256)])
    left, top = box[:2]
    if image.mode == "RGBA":
        overlay = Image.new("RGBA", mask.size, (red, green, blue, 0))
        overlay.putalpha(mask)
        for strip in strips:
            image.alpha_composite(overlay, dest=(left + strip[0], top + strip[1]), source=strip)
        return
    if image.mode == "L":
        ink: int | tuple[int, ...] = red
    elif image.mode == "CMYK":
        cmyk = Image.new("RGB", (1, 1), (red, green, blue)).convert("CMYK").getpixel((0, 0))
        assert isinstance(cmyk, tuple)
        ink = cmyk
    else:
        ink = (red, green, blue)
    image.load()
    if image.readonly:  # over memory it does not own: Pillow's paste makes it a copy first
        image.paste(ink, (left, top), mask)
        return
    # Straight to Pillow's core, as `Image.paste` does after its checks: a strip holds a few
    # hundred pixels, and the checks (`ImageFile.load`, two `Image` wrappers per strip) cost
    # more than blending them. Pasting an image of the ink blends the same as pasting the
    # colour, three times faster per pixel (the colour fill compares the mode name at every
    # byte).
    target, coverage_core = image.im, mask.im
    for x0, y0, x1, y1 in strips:
        solid = Image.core.fill(image.mode, (x1 - x0, y1 - y0), ink)
        box_in_image = (left + x0, top + y0, left + x1, top + y1)
        target.paste(solid, box_in_image, coverage_core.crop((x0, y0, x1, y1)))


def draw_curves(
    image: Image.Image, curves: Sequence[Tck], options: DrawOptions, in_place: bool = False
) -> tuple[Image.Image, DrawReport]:
    """Draw every curve on a copy of the image (or on it, if `in_place` and its mode allows).

    Returns the image drawn on and what was drawn.
    The result's mode is the input's when it can show the ink (RGB, RGBA, CMYK; L and LA
    for grey ink); colour ink on greyscale gives RGB(A), palette images come back as
    RGB(A), and 16-bit greyscale is scaled to 8 bits.
    """
    source_mode = image.mode
    check_coordinates(curves, image.size)
    width = options.width if options.width is not None else default_width(image.size)
    report = DrawReport(width=width, curves=len(curves))
    w_img, h_img = image.size
    half = width / 2.0
    # Segments further out than the stroke's half width cannot touch a pixel.
    visible = (-half - 1.0, -half - 1.0, w_img - 1 + half + 1.0, h_img - 1 + half + 1.0)
    strokes = _Strokes()
    for index, curve in enumerate(curves):
        drawn = False
        for polyline in sample_curve(curve):
            runs = clip_polyline(polyline, visible)
            drawn = drawn or bool(runs)
            strokes.lines += [(run, width) for run in runs]
            for end in (polyline[0], polyline[-1]):
                if visible[0] <= end[0] <= visible[2] and visible[1] <= end[1] <= visible[3]:
                    strokes.discs.append((float(end[0]), float(end[1]), half))
        if not drawn:
            report.outside.append(index)
        if options.show_control_points:
            thin = max(1.0, width / 2.0)
            strokes.lines += [(run, thin) for run in clip_polyline(curve.points, visible)]
            side = max(2.0, width)
            strokes.squares += [(float(x), float(y), side) for x, y in curve.points]
        if options.show_knots:
            radius, ring = max(3.0, 1.5 * width), max(1.0, width / 2.0)
            strokes.rings += [(float(x), float(y), radius, ring) for x, y in knot_points(curve)]

    result = _working_image(image, options.color)
    result = result.copy() if result is image and not in_place else result
    box = strokes.bounding_box(image.size)
    if box is not None:
        coverage = _rasterise(strokes, box)
        _apply_ink(result, coverage, box, _inked_strips(coverage), options.color)
    if source_mode in ("LA", "La") and result.mode == "RGBA" and _is_grey(options.color):
        result = result.convert("LA")
    return result, report


def _is_grey(color: Rgba) -> bool:
    return color[0] == color[1] == color[2]
