"""The HTML report in a real browser: headless Chromium takes a screenshot and the PNG shows the page.

Skipped when no `chromium` (or `chromium-browser`) binary is on PATH.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import struct
import subprocess
import zlib
from collections import Counter
from pathlib import Path

import pytest

from test_reports import full_summary, minimal_summary
from tuneloop.reports.summary import RetrainSummary
from tuneloop.reports.write import write_reports

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(BROWSER is None, reason="no chromium binary on PATH (apt-get install chromium to run this)"),
]

WIDTH, HEIGHT = 1200, 1600
PROMOTED_BANNER = (0xDC, 0xFC, 0xE7)  # .promoted background
REJECTED_BANNER = (0xFE, 0xE2, 0xE2)  # .rejected background
CANDIDATE_BAR = (0x25, 0x63, 0xEB)
INCUMBENT_BAR = (0x94, 0xA3, 0xB8)


def decode_png(data: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """Width, height and RGB pixels of an 8-bit RGB/RGBA, non-interlaced PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0, header
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    import numpy as np

    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int32)
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = np.frombuffer(raw, dtype=np.uint8, count=stride, offset=y * (stride + 1) + 1).astype(np.int32)
        if ftype == 0:
            cur = line
        elif ftype == 2:
            cur = (line + prev) & 0xFF
        else:  # Sub, Average, Paeth depend on the pixel to the left: byte by byte
            cur, lp = [0] * stride, line.tolist()
            up = prev.tolist()
            for i in range(stride):
                a = cur[i - bpp] if i >= bpp else 0
                b = up[i]
                if ftype == 1:
                    cur[i] = (lp[i] + a) & 0xFF
                elif ftype == 3:
                    cur[i] = (lp[i] + ((a + b) >> 1)) & 0xFF
                else:
                    c = up[i - bpp] if i >= bpp else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                    cur[i] = (lp[i] + pred) & 0xFF
            cur = np.array(cur, dtype=np.int32)
        out[y] = cur
        prev = cur
    pixels = out.reshape(height, width, bpp)[:, :, :3].reshape(-1, 3)
    return width, height, [tuple(p) for p in pixels.tolist()]


def screenshot(html: Path, png: Path) -> bytes:
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--screenshot={png}", f"--window-size={WIDTH},{HEIGHT}", html.resolve().as_uri()]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert png.exists(), f"chromium wrote no screenshot (rc {result.returncode}): {result.stderr[-2000:]}"
    return png.read_bytes()


def near(color: tuple[int, int, int], target: tuple[int, int, int], tol: int = 6) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(color, target))


def colours(pixels: list[tuple[int, int, int]]) -> Counter:
    return Counter(pixels)


def test_screenshot_of_the_full_report(tmp_path):
    paths = write_reports(RetrainSummary.from_json(full_summary()), tmp_path / "full")
    data = screenshot(paths["html"], tmp_path / "full.png")
    assert len(data) > 20_000, f"screenshot is only {len(data)} bytes: likely a blank page"
    width, height, pixels = decode_png(data)
    assert (width, height) == (WIDTH, HEIGHT)
    counts = colours(pixels)
    top_share = counts.most_common(1)[0][1] / len(pixels)
    assert top_share < 0.8, f"one colour covers {top_share:.0%} of the page: blank or broken"
    assert len(counts) > 200, f"only {len(counts)} distinct colours: no text or charts drawn"
    total = len(pixels)
    banner = sum(n for c, n in counts.items() if near(c, PROMOTED_BANNER, 2))
    blue = sum(n for c, n in counts.items() if near(c, CANDIDATE_BAR))
    grey = sum(n for c, n in counts.items() if near(c, INCUMBENT_BAR))
    assert banner > total * 0.01, "no green promoted banner"
    assert blue > total * 0.01, "no challenger bars in the metrics chart"
    assert grey > total * 0.005, "no champion bars in the metrics chart"


def test_screenshot_of_a_rejected_minimal_report(tmp_path):
    paths = write_reports(RetrainSummary.from_json(minimal_summary()), tmp_path / "min")
    _, _, pixels = decode_png(screenshot(paths["html"], tmp_path / "min.png"))
    counts = colours(pixels)
    red = sum(n for c, n in counts.items() if near(c, REJECTED_BANNER, 2))
    green = sum(n for c, n in counts.items() if near(c, PROMOTED_BANNER, 2))
    assert red > len(pixels) * 0.005 and green == 0


# Measures the laid-out sample table: in every row, what each cell shows (its text, cut where the cell
# clips it) must end before the next cell begins. Added to a copy of the page only: reports have no scripts.
MEASURE = """<script>
const rows = [...document.querySelectorAll("table.items tbody tr")];
const overlaps = [];
for (const row of rows) {
  const cells = [...row.cells];
  for (let i = 0; i + 1 < cells.length; i++) {
    const cell = cells[i], box = cell.getBoundingClientRect(), range = document.createRange();
    range.selectNodeContents(cell);
    let right = range.getBoundingClientRect().right;
    if (getComputedStyle(cell).overflowX === "hidden") right = Math.min(right, box.right);
    const next = cells[i + 1].getBoundingClientRect().left;
    if (right > next + 0.5) overlaps.push(`row ${row.rowIndex} cell ${i}: text ends at ${right}, next cell at ${next}`);
  }
}
document.body.setAttribute("data-rows", String(rows.length));
document.body.setAttribute("data-overlaps", JSON.stringify(overlaps));
</script>"""


@pytest.mark.parametrize("width", [1200, 760])
def test_long_item_ids_stay_in_their_column(tmp_path, width):
    s = full_summary()
    for n, item in enumerate(s["items"]):
        item["id"] = f"{n:02d}" + "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a"  # 64 characters
    s["items"][2]["prompt"] = "x" * 300  # one unbroken word
    paths = write_reports(RetrainSummary.from_json(s), tmp_path / "ids")
    page = tmp_path / "measured.html"
    page.write_text(paths["html"].read_text().replace("</body>", MEASURE + "</body>"))
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={width},{HEIGHT}", "--dump-dom",
           page.resolve().as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<body data-rows="(\d+)" data-overlaps="([^"]*)"', dom)
    assert found, f"the measuring script did not run: {dom[:500]}"
    assert found.group(1) == "3"
    assert json.loads(html.unescape(found.group(2))) == []
