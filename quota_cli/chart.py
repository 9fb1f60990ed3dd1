"""A line chart as a PNG, in pure Python (zlib for the compression): no plotting library to install for one
picture. Axes and lines only, no text; whoever writes the file names the colours beside it."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping, Sequence

WIDTH, HEIGHT, MARGIN = 800, 400, 40
Rgb = tuple[int, int, int]
COLOURS: tuple[tuple[str, Rgb], ...] = (
    ("blue", (31, 119, 180)),
    ("orange", (255, 127, 14)),
    ("green", (44, 160, 44)),
    ("red", (214, 39, 40)),
    ("purple", (148, 103, 189)),
    ("brown", (140, 86, 75)),
    ("pink", (227, 119, 194)),
    ("grey", (127, 127, 127)),
)
_AXIS: Rgb = (0, 0, 0)
_GRID: Rgb = (225, 225, 225)


def colour_names(series: Sequence[str]) -> dict[str, str]:
    """Which colour each series is drawn in, in `line_chart`'s order."""
    return {name: COLOURS[index % len(COLOURS)][0] for index, name in enumerate(series)}


class _Canvas:
    def __init__(self) -> None:
        self.rows = [bytearray(b"\xff" * WIDTH * 3) for _ in range(HEIGHT)]

    def dot(self, x: int, y: int, colour: Rgb) -> None:
        if 0 <= x < WIDTH and 0 <= y < HEIGHT:
            self.rows[y][3 * x : 3 * x + 3] = bytes(colour)

    def line(self, start: tuple[int, int], end: tuple[int, int], colour: Rgb, thick: bool = False) -> None:
        (x0, y0), (x1, y1) = start, end
        steps = max(abs(x1 - x0), abs(y1 - y0), 1)
        for step in range(steps + 1):
            x, y = x0 + (x1 - x0) * step // steps, y0 + (y1 - y0) * step // steps
            self.dot(x, y, colour)
            if thick:
                self.dot(x, y + 1, colour)
                self.dot(x + 1, y, colour)

    def png(self) -> bytes:
        raw = b"".join(b"\x00" + bytes(row) for row in self.rows)  # filter type 0 on every row

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        header = struct.pack(">IIBBBBB", WIDTH, HEIGHT, 8, 2, 0, 0, 0)  # 8-bit RGB
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def line_chart(series: Mapping[str, Sequence[tuple[int, int]]]) -> bytes:
    """Each series' (x, y) points, oldest first, drawn to one scale from 0 up, in `colour_names` order."""
    points = [point for values in series.values() for point in values]
    xs, ys = [x for x, _ in points] or [0], [y for _, y in points] or [0]
    x_low, x_span, y_span = min(xs), max(max(xs) - min(xs), 1), max(max(ys), 1)
    plot_w, plot_h = WIDTH - 2 * MARGIN, HEIGHT - 2 * MARGIN
    canvas = _Canvas()
    for tenth in range(1, 11):
        y = HEIGHT - MARGIN - plot_h * tenth // 10
        canvas.line((MARGIN, y), (WIDTH - MARGIN, y), _GRID)
    canvas.line((MARGIN, HEIGHT - MARGIN), (WIDTH - MARGIN, HEIGHT - MARGIN), _AXIS)
    canvas.line((MARGIN, MARGIN), (MARGIN, HEIGHT - MARGIN), _AXIS)

    def place(point: tuple[int, int]) -> tuple[int, int]:
        x, y = point
        return MARGIN + (x - x_low) * plot_w // x_span, HEIGHT - MARGIN - y * plot_h // y_span

    for index, values in enumerate(series.values()):
        colour = COLOURS[index % len(COLOURS)][1]
        placed = [place(point) for point in values]
        for start, end in zip(placed, placed[1:] or placed, strict=False):
            canvas.line(start, end, colour, thick=True)
    return canvas.png()
