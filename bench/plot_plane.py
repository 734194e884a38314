"""The speed / error plane of `bench/peer_attn.py --json` as a PNG (Pillow): one panel per shape, x =
rel. L2 error vs fp32 dense (log scale), y = speedup over cuDNN SDPA bf16 (log scale). AdaCluster as
curves over max_density, one per precision; every peer as a labelled point. Up and left is better.

    python bench/plot_plane.py peers.json docs/img/speed_error_plane.png
"""
from __future__ import annotations

import json
import math
import sys

from PIL import Image, ImageDraw, ImageFont

W, H, PAD_L, PAD_R, PAD_T, PAD_B = 640, 440, 64, 16, 40, 48
BG, FG, GRID, MUTED = (255, 255, 255), (20, 20, 20), (225, 225, 225), (110, 110, 110)
CURVES = {"AdaCluster bf16": (31, 119, 180), "AdaCluster fp8": (214, 39, 40)}
PEER_COLOURS = [(44, 160, 44), (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34),
                (23, 190, 207), (255, 127, 14)]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - older Pillow
        return ImageFont.load_default()


def _axes(pts):
    ex = [p["err"] for p in pts if p["err"] > 0]
    sy = [p["speedup"] for p in pts if p["speedup"] > 0]
    x0, x1 = math.floor(math.log10(min(ex))), math.ceil(math.log10(max(ex)))
    y0, y1 = math.log2(min(sy)) - 0.25, math.log2(max(sy)) + 0.25
    return x0, max(x1, x0 + 1), y0, y1


def panel(shape: str, pts: list[dict]) -> Image.Image:
    img = Image.new("RGB", (W, H), BG)
    d = ImageDraw.Draw(img)
    f, fs = _font(13), _font(11)
    x0, x1, y0, y1 = _axes(pts)
    px = lambda e: PAD_L + (math.log10(e) - x0) / (x1 - x0) * (W - PAD_L - PAD_R)  # noqa: E731
    py = lambda s: H - PAD_B - (math.log2(s) - y0) / (y1 - y0) * (H - PAD_T - PAD_B)  # noqa: E731
    for e in range(x0, x1 + 1):
        d.line([(px(10 ** e), PAD_T), (px(10 ** e), H - PAD_B)], fill=GRID)
        d.text((px(10 ** e) - 14, H - PAD_B + 4), f"1e{e}", fill=MUTED, font=fs)
    for s in [0.5, 1, 2, 4, 8, 16]:
        if y0 <= math.log2(s) <= y1:
            d.line([(PAD_L, py(s)), (W - PAD_R, py(s))], fill=GRID)
            d.text((PAD_L - 34, py(s) - 6), f"{s:g}x", fill=MUTED, font=fs)
    d.text((PAD_L, 8), f"{shape}: speed vs error (same card, same inputs)", fill=FG, font=f)
    d.text((W // 2 - 110, H - 20), "rel. L2 error vs fp32 dense (log)", fill=FG, font=fs)
    d.text((4, PAD_T - 16), "x cuDNN bf16", fill=FG, font=fs)
    legend_y = PAD_T + 4
    for name, col in CURVES.items():
        cur = sorted((p for p in pts if p["method"] == name and p["err"] > 0), key=lambda p: p["err"])
        if not cur:
            continue
        xy = [(px(p["err"]), py(p["speedup"])) for p in cur]
        if len(xy) > 1:
            d.line(xy, fill=col, width=2)
        for x, y in xy:
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=col)
        d.text((W - PAD_R - 170, legend_y), f"- {name} (max_density)", fill=col, font=fs)
        legend_y += 14
    peers = [p for p in pts if not p["method"].startswith("AdaCluster") and p["err"] > 0 and p["speedup"] > 0]
    for i, p in enumerate(peers):
        col = PEER_COLOURS[i % len(PEER_COLOURS)]
        x, y = px(p["err"]), py(p["speedup"])
        d.rectangle([x - 4, y - 4, x + 4, y + 4], outline=col, width=2)
        label = p["method"].replace("comfy_kitchen ", "ck ").replace(" (dense)", "")
        label += f" {p['setting']}" if p["setting"] != "-" else ""
        d.text((W - PAD_R - 170, legend_y), f"# {label}", fill=col, font=fs)
        legend_y += 14
    return img


def plot(points: list[dict], header: str, out_png: str) -> None:
    shapes = list(dict.fromkeys(p["shape"] for p in points))
    panels = [panel(s, [p for p in points if p["shape"] == s]) for s in shapes]
    img = Image.new("RGB", (W * len(panels), H + 18), BG)
    for i, pnl in enumerate(panels):
        img.paste(pnl, (i * W, 0))
    ImageDraw.Draw(img).text((8, H + 2), header[:160], fill=MUTED, font=_font(11))
    img.save(out_png)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        raise SystemExit(__doc__)
    with open(argv[0]) as f:
        data = json.load(f)
    plot(data["points"], data.get("header", ""), argv[1])


if __name__ == "__main__":
    main()
