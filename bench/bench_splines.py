"""Benchmark of spline rendering on a 1024 x 1024 photo (issue 6). Not a timed test.

Compares, on the same synthetic photo and curve:

* the whole request path: a multipart POST through Django and DRF to /api/splines/render/
  (decode, validate, evaluate, draw, encode), and `render_spline` alone;
* the floor: decoding plus encoding the same image with the same codec settings;
* the naive approach public snippets take: matplotlib imshow + plot + savefig with a tight
  bounding box (which also shrinks the picture).

Targets: whole path within 1.5x of the floor; at least 10x faster than the naive approach
for JPEG in and out. Also measures the stroke's coverage error against an exact stroke,
next to matplotlib's Agg. Run: `.venv/bin/python -m bench.bench_splines` (about a minute);
writes bench/results/splines.json.
"""

from __future__ import annotations

import io
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "zypher.settings")

import django  # noqa: E402

django.setup()

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from django.test import Client, RequestFactory, override_settings  # noqa: E402
from django.test.client import BOUNDARY, encode_multipart  # noqa: E402
from PIL import Image  # noqa: E402
from rest_framework.request import Request  # noqa: E402
from scipy.interpolate import splev, splprep  # noqa: E402

from splines.coverage import coverage_error, dense_curve, exact_coverage  # noqa: E402
from splines.drawing import DrawOptions, draw_curves  # noqa: E402
from splines.evaluation import sample_curve  # noqa: E402
from splines.images import decode_image, encode_image  # noqa: E402
from splines.parsers import LeanMultiPartParser  # noqa: E402
from splines.render import render_spline  # noqa: E402
from splines.serializers import RenderRequestSerializer  # noqa: E402
from splines.tck import CurveSet, parse_curves, validate_tck  # noqa: E402

SIZE = 1024
REPEATS = 31
NAIVE_REPEATS = 5
RESULTS = ROOT / "bench" / "results" / "splines.json"


def synthetic_photo(size: int = SIZE, seed: int = 6) -> Image.Image:
    """Smooth gradients, soft blobs, texture and sensor noise: compresses like a photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    channels = []
    for phase in (0.0, 1.3, 2.6):
        value = 90 + 80 * x * np.cos(phase) + 60 * y * np.sin(phase + 0.5)
        for _ in range(12):
            cx, cy, radius = rng.random(), rng.random(), 0.03 + 0.15 * rng.random()
            value += rng.normal(0, 45) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / radius**2)
        value += 12 * np.sin(40 * x + 25 * y + phase) * np.cos(30 * y)
        channels.append(value)
    array = np.stack(channels, axis=-1) + rng.normal(0, 5, (size, size, 3))
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "RGB")


def benchmark_curve() -> tuple[tuple, list]:
    points = np.array(
        [[60, 900], [180, 200], [400, 120], [520, 620], [700, 880], [880, 400], [960, 90]]
    ) * (SIZE / 1024)
    (t, c, k), _ = splprep(points.T, k=3, s=0)
    return (t, c, k), [t.tolist(), [c[0].tolist(), c[1].tolist()], int(k)]


def median_ms(function: Callable[[], object], repeats: int) -> float:
    function()  # warm-up
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        timings.append((time.perf_counter() - start) * 1000)
    return statistics.median(timings)


def interleaved_medians(
    functions: dict[str, Callable[[], object]], repeats: int, cpu: dict[str, float] | None = None
) -> dict[str, float]:
    """Median milliseconds of each function, run in turn so that all see the same load.

    With `cpu`, also fills it with the median process CPU milliseconds of each: on a shared,
    loaded machine the wall clock adds time spent waiting for a core, which grows with the
    length of a call; CPU time shows what the code itself costs.
    """
    timings: dict[str, list[float]] = {name: [] for name in functions}
    cpu_timings: dict[str, list[float]] = {name: [] for name in functions}
    for function in functions.values():
        function()  # warm-up
    for _ in range(repeats):
        for name, function in functions.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            function()
            timings[name].append((time.perf_counter() - start) * 1000)
            cpu_timings[name].append((time.process_time() - start_cpu) * 1000)
    if cpu is not None:
        cpu.update({name: statistics.median(values) for name, values in cpu_timings.items()})
    return {name: statistics.median(values) for name, values in timings.items()}


def floor(data: bytes, image_format: str) -> None:
    image = Image.open(io.BytesIO(data))
    image.load()
    encode_image(image, image_format)


def naive_matplotlib(
    data: bytes, scipy_tck: tuple, image_format: str, full_size: bool
) -> tuple[int, int]:
    """What public answers do: imshow, plot the splev points, savefig(bbox_inches='tight').

    With the default figure the picture comes out shrunk; `full_size` sizes the figure so
    that the image is shown at one pixel per pixel, which is what the service delivers.
    """
    image = np.asarray(Image.open(io.BytesIO(data)))
    x, y = splev(np.linspace(0, 1, 1000), scipy_tck)
    dpi = 100
    if full_size:
        figure = plt.figure(figsize=(image.shape[1] / dpi, image.shape[0] / dpi), dpi=dpi)
        axes = figure.add_axes((0, 0, 1, 1))
    else:
        figure, axes = plt.subplots()
    axes.imshow(image)
    axes.plot(x, y, color="#ff00ff", linewidth=3)
    axes.axis("off")
    buffer = io.BytesIO()
    figure.savefig(buffer, format=image_format, bbox_inches="tight", pad_inches=0, dpi=dpi)
    plt.close(figure)
    return Image.open(io.BytesIO(buffer.getvalue())).size


def multipart_body(data: bytes, name: str, tck_json: str) -> bytes:
    """The upload as a client would send it, built once so only the server side is timed."""
    upload = io.BytesIO(data)
    upload.name = name
    return encode_multipart(BOUNDARY, {"image": upload, "tck": tck_json})


def request_path(client: Client, body: bytes) -> None:
    response = client.post(
        "/api/splines/render/", body, content_type=f"multipart/form-data; boundary={BOUNDARY}"
    )
    assert response.status_code == 200, response.content[:300]


def breakdown(data: bytes, body: bytes, curve_set: CurveSet) -> dict[str, float]:
    """Median milliseconds of each step of the JPEG request path, in the same run."""
    factory = RequestFactory()
    content_type = f"multipart/form-data; boundary={BOUNDARY}"

    def parse() -> object:
        request = factory.post("/api/splines/render/", body, content_type=content_type)
        return Request(request, parsers=[LeanMultiPartParser()]).data

    fields = parse()

    def validate() -> object:
        serializer = RenderRequestSerializer(data=fields)
        serializer.is_valid(raise_exception=True)
        return serializer.to_request()

    decoded = decode_image(data).image
    options = DrawOptions()
    return interleaved_medians(
        {
            "multipart parse": parse,
            "validate (serializer, tck)": validate,
            "decode": lambda: decode_image(data),
            "draw": lambda: draw_curves(decoded.copy(), curve_set.curves, options, in_place=True),
            "copy (subtract from draw)": lambda: decoded.copy(),
            "encode": lambda: encode_image(decoded, "JPEG"),
        },
        REPEATS,
    )


def coverage_comparison() -> list[dict[str, float]]:
    """Coverage error of our stroke and of matplotlib's Agg against an exact stroke."""
    (t, c, k), _ = splprep(
        np.array([[13, 13], [51, 67], [99, 27], [123, 83], [91, 115], [35, 99]]).T * 2, k=3, s=0
    )
    tck = validate_tck(t.tolist(), [c[0].tolist(), c[1].tolist()], int(k))
    size = (256, 256)
    truth = dense_curve(tck)
    (polyline,) = sample_curve(tck)
    rows = []
    for width in (1.0, 2.0, 4.0, 8.0):
        exact = exact_coverage(truth, width, size, supersample=16)
        ours, _ = draw_curves(
            Image.new("L", size, 0), [tck], DrawOptions(color=(255, 255, 255, 255), width=width)
        )
        dpi = 100
        figure = plt.figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi, facecolor="black")
        axes = figure.add_axes((0, 0, 1, 1))
        axes.set_axis_off()
        axes.set_xlim(-0.5, size[0] - 0.5)
        axes.set_ylim(size[1] - 0.5, -0.5)
        axes.plot(*polyline.T, color="white", linewidth=width * 72 / dpi, solid_capstyle="round")
        figure.canvas.draw()
        agg = np.asarray(figure.canvas.buffer_rgba())[..., 0] / 255.0
        plt.close(figure)
        ours_error = coverage_error(np.asarray(ours) / 255.0, exact)
        agg_error = coverage_error(agg, exact)
        rows.append(
            {
                "width_px": width,
                "ours_relative": ours_error["relative"],
                "ours_max_pixel": ours_error["max_pixel"],
                "matplotlib_relative": agg_error["relative"],
                "matplotlib_max_pixel": agg_error["max_pixel"],
            }
        )
    return rows


def main() -> None:
    photo = synthetic_photo()
    scipy_tck, tck_list = benchmark_curve()
    tck_json = json.dumps(tck_list)
    curve_set = parse_curves(tck_list)
    client = Client()
    rows = []
    for label, image_format, save_options, name in (
        ("JPEG", "JPEG", {"quality": 90}, "photo.jpg"),
        ("PNG", "PNG", {}, "photo.png"),
    ):
        buffer = io.BytesIO()
        photo.save(buffer, image_format, **save_options)
        data = buffer.getvalue()
        body = multipart_body(data, name, tck_json)
        cpu: dict[str, float] = {}
        with override_settings(ROOT_URLCONF="splines.urls"):
            medians = interleaved_medians(
                {
                    "request": lambda body=body: request_path(client, body),
                    "function": lambda data=data: render_spline(data, curve_set),
                    "floor": lambda data=data, fmt=image_format: floor(data, fmt),
                },
                REPEATS,
                cpu,
            )
        request_ms, function_ms, floor_ms = (medians[k] for k in ("request", "function", "floor"))
        naive: dict[str, tuple[float, tuple[int, int]]] = {}
        for variant, full_size in (("full_size", True), ("default_figure", False)):

            def run(data=data, image_format=image_format, full_size=full_size) -> tuple[int, int]:
                return naive_matplotlib(data, scipy_tck, image_format.lower(), full_size)

            naive[variant] = (median_ms(run, NAIVE_REPEATS), run())
        rows.append(
            {
                "format": label,
                "input_bytes": len(data),
                "request_ms": request_ms,
                "render_spline_ms": function_ms,
                "decode_encode_floor_ms": floor_ms,
                "naive_full_size_ms": naive["full_size"][0],
                "naive_full_size_output": list(naive["full_size"][1]),
                "naive_default_figure_ms": naive["default_figure"][0],
                "naive_default_figure_output": list(naive["default_figure"][1]),
                "request_over_floor": request_ms / floor_ms,
                "request_over_floor_cpu": cpu["request"] / cpu["floor"],
                "render_spline_over_floor_cpu": cpu["function"] / cpu["floor"],
                "naive_full_size_over_request": naive["full_size"][0] / request_ms,
            }
        )
    jpeg = io.BytesIO()
    photo.save(jpeg, "JPEG", quality=90)
    steps = breakdown(
        jpeg.getvalue(), multipart_body(jpeg.getvalue(), "photo.jpg", tck_json), curve_set
    )
    coverage = coverage_comparison()

    print(f"Spline rendering on a {SIZE}x{SIZE} synthetic photo (median of {REPEATS} runs)")
    print()
    header = (
        f"{'in/out':<6} {'request':>9} {'render_spline':>14} {'floor':>8} {'req/floor':>10} "
        f"{'naive, full size':>17} {'naive/req':>10} {'naive, default figure':>26}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        width, height = row["naive_default_figure_output"]
        print(
            f"{row['format']:<6} {row['request_ms']:>7.1f}ms {row['render_spline_ms']:>12.1f}ms "
            f"{row['decode_encode_floor_ms']:>6.1f}ms {row['request_over_floor']:>9.2f}x "
            f"{row['naive_full_size_ms']:>15.1f}ms {row['naive_full_size_over_request']:>9.1f}x "
            f"{row['naive_default_figure_ms']:>12.1f}ms ({width}x{height})"
        )
    print()
    print(
        "CPU time (process, medians): request / floor "
        + ", ".join(f"{r['format']} {r['request_over_floor_cpu']:.2f}x" for r in rows)
        + "; render_spline / floor "
        + ", ".join(f"{r['format']} {r['render_spline_over_floor_cpu']:.2f}x" for r in rows)
    )
    print()
    print("Steps of the JPEG request path (medians, same run)")
    for name, value in steps.items():
        print(f"  {name:<28} {value:>6.2f}ms")
    print()
    print("Stroke coverage error against an exact stroke (sum |error| / ink; worst pixel)")
    print(f"{'width':>6} {'ours':>16} {'matplotlib Agg':>18}")
    for row in coverage:
        print(
            f"{row['width_px']:>5.0f}px {row['ours_relative']:>8.2%} / {row['ours_max_pixel']:.2f}"
            f" {row['matplotlib_relative']:>10.2%} / {row['matplotlib_max_pixel']:.2f}"
        )
    targets = {
        "request_within_1_5x_of_floor": all(r["request_over_floor"] <= 1.5 for r in rows),
        "jpeg_at_least_10x_faster_than_naive": rows[0]["naive_full_size_over_request"] >= 10,
    }
    print()
    print(
        "targets:", ", ".join(f"{name}={'met' if ok else 'MISSED'}" for name, ok in targets.items())
    )

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "image_size": [SIZE, SIZE],
                "repeats": REPEATS,
                "machine": {
                    "python": platform.python_version(),
                    "processor": platform.machine(),
                    "cpus": os.cpu_count(),
                    "load_average": list(os.getloadavg()),
                },
                "paths": rows,
                "jpeg_steps_ms": steps,
                "coverage": coverage,
                "targets": targets,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
