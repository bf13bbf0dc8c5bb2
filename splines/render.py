"""The whole rendering path: decode, validate against the image, evaluate, draw, encode."""

from __future__ import annotations

from dataclasses import dataclass, field

from .drawing import DrawOptions, draw_curves
from .images import CONTENT_TYPES, EXTENSIONS, decode_image, encode_image, output_format
from .tck import CurveSet


@dataclass
class RenderedImage:
    """The encoded result, its type, and what a client should be told about it."""

    data: bytes
    format: str
    width: int
    height: int
    line_width: float
    curves: int
    outside: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.format]


def render_spline(
    image_data: bytes,
    curve_set: CurveSet,
    options: DrawOptions | None = None,
    requested_format: str = "same",
) -> RenderedImage:
    """Draw the curves on the encoded image and return the encoded result.

    Raises `ImageInputError` for an unusable image and `SplineInputError` for curves that
    cannot be drawn on it (control points absurdly far away).
    """
    decoded = decode_image(image_data)
    image = decoded.image
    curves = curve_set.curves
    if curve_set.frame_size is not None:
        # A dlabel export gives coordinates in its frame; the upload may be resized.
        frame_width, frame_height = curve_set.frame_size
        sx, sy = image.width / frame_width, image.height / frame_height
        if (sx, sy) != (1.0, 1.0):
            curves = [curve.scaled(sx, sy) for curve in curves]
    # The decoded image is ours alone: draw on it rather than on a copy.
    drawn, report = draw_curves(image, curves, options or DrawOptions(), in_place=True)
    image_format = output_format(requested_format, decoded.format)
    data = encode_image(drawn, image_format, decoded.icc_profile, source_mode=image.mode)
    warnings = list(report.warnings)
    if not curves:
        warnings.append("no curves were given; the image is unchanged.")
    return RenderedImage(
        data=data,
        format=image_format,
        width=drawn.width,
        height=drawn.height,
        line_width=report.width,
        curves=report.curves,
        outside=report.outside,
        warnings=warnings,
    )
