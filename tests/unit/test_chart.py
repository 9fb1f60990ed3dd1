"""The PNG chart `quota budget history --png` writes, read back with zlib: a valid image with the lines in
their colours."""

from __future__ import annotations

import struct
import zlib

from quota_cli.chart import COLOURS, HEIGHT, WIDTH, colour_names, line_chart


def pixels(png: bytes) -> set[tuple[int, int, int]]:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    chunks, at = {}, 8
    while at < len(png):
        (length,) = struct.unpack(">I", png[at : at + 4])
        kind, data = png[at + 4 : at + 8], png[at + 8 : at + 8 + length]
        assert struct.unpack(">I", png[at + 8 + length : at + 12 + length])[0] == zlib.crc32(kind + data)
        chunks[kind] = data
        at += 12 + length
    assert struct.unpack(">II", chunks[b"IHDR"][:8]) == (WIDTH, HEIGHT)
    raw = zlib.decompress(chunks[b"IDAT"])
    rows = [raw[y * (3 * WIDTH + 1) + 1 : (y + 1) * (3 * WIDTH + 1)] for y in range(HEIGHT)]
    return {(row[x], row[x + 1], row[x + 2]) for row in rows for x in range(0, 3 * WIDTH, 3)}


def test_each_region_is_drawn_in_the_colour_it_is_named_with() -> None:
    series = {"eu": [(0, 0), (10, 5), (20, 9)], "us": [(5, 1), (20, 3)]}

    drawn = pixels(line_chart(series))

    assert colour_names(list(series)) == {"eu": "blue", "us": "orange"}
    assert {COLOURS[0][1], COLOURS[1][1]} <= drawn


def test_a_chart_of_nothing_is_still_an_image() -> None:
    assert (255, 255, 255) in pixels(line_chart({}))
