"""Pictures of an AdaCluster run, drawn with Pillow (ComfyUI ships it): the Stats node's density
heatmap (layers x steps, with axes, a colour legend and the mean density in the title), a per-layer
density bar chart, and the demo's report page. Reads only the stats dict of run_summary.summarize();
imports neither ComfyUI nor adacluster_core, so scripts can load it by file path.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

BG = (27, 27, 27)
FG = (224, 224, 224)
MUTED = (150, 150, 150)
NO_CALL = (90, 90, 90)
# viridis, sampled: dark = sparse (little computed), yellow = dense
_CMAP = [(0.0, (68, 1, 84)), (0.25, (58, 82, 139)), (0.5, (33, 145, 140)), (0.75, (94, 201, 98)),
         (1.0, (253, 231, 37))]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)   # scalable (Pillow >= 10.1 with FreeType)
    except TypeError:  # pragma: no cover - older Pillow: fixed bitmap font
        return ImageFont.load_default()


def colour(v: Optional[float]) -> tuple:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return NO_CALL
    v = min(1.0, max(0.0, float(v)))
    for (x0, c0), (x1, c1) in zip(_CMAP, _CMAP[1:]):
        if v <= x1:
            t = (v - x0) / (x1 - x0)
            return tuple(int(round(a + (b - a) * t)) for a, b in zip(c0, c1))
    return _CMAP[-1][1]


def _tw(draw, text, font) -> int:
    b = draw.textbbox((0, 0), text, font=font)
    return b[2] - b[0]


def _every(cell: float, need: float) -> int:
    """Label every n-th row/column so labels `need` px apart never overlap."""
    return max(1, math.ceil(need / max(cell, 1e-6)))


def _title_lines(d: dict) -> list:
    mean = d.get("mean_density")
    calls, sparse = d.get("calls") or 0, d.get("sparse_calls") or 0
    l2 = (f"mean density of sparse calls {mean:.2f}" if mean is not None else "no call ran sparse") \
        + f"  ({sparse} of {calls} calls sparse)"
    return ["AdaCluster density per layer x step", l2]


def heatmap_pil(d: Optional[dict], max_grid: int = 560) -> Image.Image:
    """The heatmap figure: rows = layers, columns = sampling steps, colour = mean density of the
    cell's calls (1.0 = dense), grey = no call."""
    d = d or {}
    grid = d.get("density_grid") or []
    f_title, f_txt, f_small = _font(16), _font(13), _font(11)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    if not grid or not grid[0]:
        img = Image.new("RGB", (480, 120), BG)
        dr = ImageDraw.Draw(img)
        dr.text((16, 16), "AdaCluster density per layer x step", fill=FG, font=f_title)
        dr.text((16, 52), d.get("summary") or "no AdaCluster run recorded yet", fill=MUTED, font=f_txt)
        return img
    R, C = len(grid), len(grid[0])
    cell = max(3.0, min(56.0, max_grid / C, max_grid / R))
    gw, gh = int(round(cell * C)), int(round(cell * R))
    ylab_w = max(_tw(probe, str(R - 1), f_small), 8) + 6
    left = 14 + 16 + ylab_w + 4            # axis title, tick labels
    top = 14 + 2 * 22 + 8                  # two title lines
    legend_x = left + gw + 26
    legend_w = 16 + 6 + _tw(probe, "0.75", f_small) + 10
    legend_block_w = max(legend_w, _tw(probe, "density", f_txt), _tw(probe, "no call", f_small) + 22,
                         _tw(probe, "1.00 = dense", f_small))
    title_w = max(_tw(probe, t, f_title if i == 0 else f_txt) for i, t in enumerate(_title_lines(d))) + 28
    width = max(legend_x + legend_block_w + 14, title_w)
    leg_h = max(gh, 150)
    height = top + max(gh + 40, leg_h + 22) + 12
    img = Image.new("RGB", (int(width), int(height)), BG)
    dr = ImageDraw.Draw(img)
    t1, t2 = _title_lines(d)
    dr.text((14, 12), t1, fill=FG, font=f_title)
    dr.text((14, 36), t2, fill=FG, font=f_txt)

    # cells
    for li, row in enumerate(grid):
        for si, v in enumerate(row):
            x0, y0 = left + si * cell, top + li * cell
            dr.rectangle([x0, y0, x0 + cell - (1 if cell >= 8 else 0), y0 + cell - (1 if cell >= 8 else 0)],
                         fill=colour(v))
            if cell >= 36 and v is not None:
                lum = sum(c * w for c, w in zip(colour(v), (0.299, 0.587, 0.114)))
                txt = f"{v:.2f}"
                dr.text((x0 + (cell - _tw(dr, txt, f_small)) / 2, y0 + cell / 2 - 7), txt,
                        fill=(0, 0, 0) if lum > 140 else (255, 255, 255), font=f_small)
    dr.rectangle([left - 1, top - 1, left + gw, top + gh], outline=MUTED)

    # y axis: layer ids
    ys = _every(cell, 14)
    for li in range(0, R, ys):
        y = top + li * cell + cell / 2 - 7
        t = str(li)
        dr.text((left - 6 - _tw(dr, t, f_small), y), t, fill=FG, font=f_small)
    lab = Image.new("RGB", (_tw(probe, "layer", f_txt) + 4, 18), BG)
    ImageDraw.Draw(lab).text((2, 0), "layer", fill=FG, font=f_txt)
    lab = lab.rotate(90, expand=True)
    img.paste(lab, (12, int(top + gh / 2 - lab.height / 2)))
    # x axis: step numbers
    xs = _every(cell, max(_tw(probe, str(C - 1), f_small) + 8, 16))
    for si in range(0, C, xs):
        t = str(si)
        dr.text((left + si * cell + cell / 2 - _tw(dr, t, f_small) / 2, top + gh + 4), t, fill=FG, font=f_small)
    t = "sampling step"
    dr.text((left + gw / 2 - _tw(dr, t, f_txt) / 2, top + gh + 20), t, fill=FG, font=f_txt)

    _draw_legend(dr, legend_x, top, leg_h, f_txt, f_small)
    img.info["grid_box"] = (left, top, cell, R, C)   # where the cells are (tests, overlays)
    return img


def _draw_legend(dr: ImageDraw.ImageDraw, legend_x, top, leg_h, f_txt, f_small) -> None:
    """The heatmap legend: gradient 1 (top) .. 0 (bottom), ticks, and the no-call swatch."""
    dr.text((legend_x, top - 2), "density", fill=FG, font=f_txt)
    by0, by1 = top + 20, top + 20 + leg_h - 40
    for y in range(int(by0), int(by1) + 1):
        v = 1.0 - (y - by0) / max(1, by1 - by0)
        dr.line([legend_x, y, legend_x + 16, y], fill=colour(v))
    dr.rectangle([legend_x - 1, by0 - 1, legend_x + 17, by1 + 1], outline=MUTED)
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = by1 - v * (by1 - by0)
        dr.line([legend_x + 17, y, legend_x + 21, y], fill=FG)
        dr.text((legend_x + 24, y - 7), f"{v:.2f}", fill=FG, font=f_small)
    dr.text((legend_x, by1 + 8), "1.00 = dense", fill=MUTED, font=f_small)
    sy = by1 + 26
    dr.rectangle([legend_x, sy, legend_x + 16, sy + 12], fill=NO_CALL, outline=MUTED)
    dr.text((legend_x + 22, sy - 1), "no call", fill=MUTED, font=f_small)


def layer_density_bars_pil(d: Optional[dict], width: int = 520) -> Image.Image:
    """Horizontal bars: per layer, the mean density over the steps it was called (dense = 1.0),
    and how many of its calls ran sparse."""
    d = d or {}
    grid = d.get("density_grid") or []
    per_layer = d.get("per_layer") or {}
    f_title, f_small = _font(16), _font(11)
    R = len(grid)
    row_h = max(9, min(22, 440 // max(R, 1)))
    top, left = 44, 56
    bar_w = width - left - 150
    img = Image.new("RGB", (width, top + max(R, 1) * row_h + 40), BG)
    dr = ImageDraw.Draw(img)
    dr.text((14, 12), "mean density per layer (all steps, dense = 1.0)", fill=FG, font=f_title)
    ls = _every(row_h, 13)
    for li, row in enumerate(grid):
        vals = [v for v in row if v is not None]
        y = top + li * row_h
        if li % ls == 0:
            dr.text((left - 8 - _tw(dr, f"L{li}", f_small), y + row_h / 2 - 7), f"L{li}", fill=FG, font=f_small)
        if not vals:
            dr.text((left, y + row_h / 2 - 7), "no call", fill=MUTED, font=f_small)
            continue
        m = sum(vals) / len(vals)
        dr.rectangle([left, y + 1, left + max(1, m * bar_w), y + row_h - 2], fill=colour(m))
        pl = per_layer.get(str(li), {})
        if row_h >= 12:
            dr.text((left + m * bar_w + 6, y + row_h / 2 - 7),
                    f"{m:.2f}  ({pl.get('sparse', 0)} sparse / {pl.get('dense', 0)} dense)", fill=FG, font=f_small)
    y = top + R * row_h + 6
    dr.line([left, top - 2, left, y], fill=MUTED)
    for v in (0.0, 0.5, 1.0):
        x = left + v * bar_w
        dr.line([x, y, x, y + 4], fill=MUTED)
        dr.text((x - 8, y + 6), f"{v:.1f}", fill=MUTED, font=f_small)
    return img


def _frame_rgb(lat: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, px: int) -> Image.Image:
    x = ((lat - lo) / (hi - lo + 1e-6)).clamp(0, 1)
    arr = (x.permute(1, 2, 0).numpy() * 255).astype("uint8")
    img = Image.fromarray(arr)
    scale = max(1, px // max(arr.shape[0], arr.shape[1]))
    return img.resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.NEAREST)


def latent_comparison_pil(sparse: torch.Tensor, dense: torch.Tensor, px: int = 256) -> Image.Image:
    """Middle frame of two video latents [B, C, T, H, W] (channels 0-2 as RGB, one shared scale)
    side by side, and |sparse - dense| on its own scale, with the relative L2 difference."""
    s, dn = sparse.float()[0], dense.float()[0]
    t = s.shape[1] // 2
    a, b = s[:3, t], dn[:3, t]
    lo = torch.minimum(a.amin(dim=(1, 2), keepdim=True), b.amin(dim=(1, 2), keepdim=True))
    hi = torch.maximum(a.amax(dim=(1, 2), keepdim=True), b.amax(dim=(1, 2), keepdim=True))
    diff = (a - b).abs().mean(0, keepdim=True).expand(3, -1, -1)
    dmax = float(diff.max())
    panels = [_frame_rgb(b, lo, hi, px), _frame_rgb(a, lo, hi, px),
              _frame_rgb(diff, torch.zeros(()), torch.tensor(max(dmax, 1e-6)), px)]
    rel = float((sparse.float() - dense.float()).norm() / dense.float().norm().clamp_min(1e-12))
    f_title, f_txt = _font(16), _font(13)
    pw, ph = panels[0].size
    img = Image.new("RGB", (3 * pw + 4 * 16, ph + 84), BG)
    dr = ImageDraw.Draw(img)
    dr.text((16, 10), f"sampled latent, middle frame (channels 0-2): relative L2 difference {rel:.4f}",
            fill=FG, font=f_title)
    for i, (p, lab) in enumerate(zip(panels, ["dense (enabled = false)", "AdaCluster sparse",
                                              f"|sparse - dense| (max {dmax:.3g})"])):
        x = 16 + i * (pw + 16)
        img.paste(p, (x, 40))
        dr.text((x, 44 + ph + 4), lab, fill=FG, font=f_txt)
    return img


def stack(images: Sequence[Image.Image], gap: int = 12, columns: int = 1) -> Image.Image:
    """Images in a grid (row-major), on the background colour."""
    rows = [images[i:i + columns] for i in range(0, len(images), columns)]
    w = max(sum(im.width for im in r) + gap * (len(r) + 1) for r in rows)
    h = sum(max(im.height for im in r) for r in rows) + gap * (len(rows) + 1)
    out = Image.new("RGB", (w, h), BG)
    y = gap
    for r in rows:
        x = gap
        for im in r:
            out.paste(im, (x, y))
            x += im.width + gap
        y += max(im.height for im in r) + gap
    return out


def to_image_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> ComfyUI IMAGE [1, H, W, 3] float 0..1."""
    t = torch.frombuffer(bytearray(img.convert("RGB").tobytes()), dtype=torch.uint8)
    return (t.view(img.height, img.width, 3).float() / 255.0).unsqueeze(0).contiguous()


def heatmap_tensor(d: Optional[dict]) -> torch.Tensor:
    return to_image_tensor(heatmap_pil(d))
