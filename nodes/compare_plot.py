"""The AdaCluster Compare chart: per-frame PSNR (top) and SSIM (bottom) over the frames, drawn with
Pillow (a ComfyUI requirement; matplotlib is not), with the paper's 29-31 dB band and the 25 dB
"look closer" line on the PSNR panel. Pure Pillow + torch, no ComfyUI import."""
from __future__ import annotations

import math

import torch

from .compare_metrics import LOOK_CLOSER_PSNR_DB, PAPER_PSNR_DB, PSNR_CAP_DB

BG, FG, GRID, AXIS = "#ffffff", "#1a1a1a", "#dcdcdc", "#555555"
PSNR_COLOR, SSIM_COLOR, BAND, WARN = "#1f5fbf", "#c0392b", "#d6efd9", "#e67e22"


def _font(size: int, bold: bool = False):
    from PIL import ImageFont
    names = (["DejaVuSans-Bold.ttf", "arialbd.ttf", "LiberationSans-Bold.ttf", "Arial Bold.ttf"] if bold else
             ["DejaVuSans.ttf", "arial.ttf", "LiberationSans-Regular.ttf", "Arial.ttf"])
    for n in names:  # Pillow looks these up in the system font folders
        try:
            return ImageFont.truetype(n, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable built-in font
    except TypeError:  # pragma: no cover - older Pillow: small bitmap font
        return ImageFont.load_default()


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """About `target` round tick values covering [lo, hi] (steps 1, 2, 2.5 or 5 x 10^k)."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, target)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    ticks, v = [], start
    while v <= hi + 1e-9 * step:
        ticks.append(round(v, 10))
        v += step
    return ticks


def _fmt(v: float, step: float) -> str:
    if step >= 1:
        return f"{v:.0f}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if abs(step * 10 ** decimals - round(step * 10 ** decimals)) > 1e-6:
        decimals += 1
    return f"{v:.{decimals}f}"


def _panel(d, box, values, lo, hi, color, title, frames, fonts, psnr_panel: bool):
    x0, y0, x1, y1 = box
    f_small, f_label = fonts
    n = len(values)

    def X(i):
        return x0 + (x1 - x0) * (0.5 if n == 1 else i / (n - 1))

    def Y(v):
        return y1 - (y1 - y0) * (min(max(v, lo), hi) - lo) / (hi - lo)

    d.text((x0, y0 - 36), title, font=f_label, fill=FG)
    if psnr_panel:  # the reading guide: paper band and the "look closer" line
        b_lo, b_hi = PAPER_PSNR_DB
        if b_hi > lo and b_lo < hi:
            d.rectangle([x0, Y(b_hi), x1, Y(b_lo)], fill=BAND)
        if lo < LOOK_CLOSER_PSNR_DB < hi:
            yy = Y(LOOK_CLOSER_PSNR_DB)
            for xs in range(int(x0), int(x1), 16):
                d.line([xs, yy, min(xs + 9, x1), yy], fill=WARN, width=2)
        # legend right of the panel title (never over the data)
        warn = f"< {LOOK_CLOSER_PSNR_DB:g} dB: look closer"
        xw = x1 - d.textlength(warn, font=f_small)
        for xs in range(int(xw - 40), int(xw - 10), 12):
            d.line([xs, y0 - 22, xs + 7, y0 - 22], fill=WARN, width=2)
        d.text((xw, y0 - 22), warn, font=f_small, fill=WARN, anchor="lm")
        band = f"paper vs dense: {b_lo:g}-{b_hi:g} dB"
        xb = xw - 70 - d.textlength(band, font=f_small)
        d.rectangle([xb - 34, y0 - 29, xb - 8, y0 - 15], fill=BAND, outline="#7cb987")
        d.text((xb, y0 - 22), band, font=f_small, fill="#2e7d32", anchor="lm")
    ticks = nice_ticks(lo, hi)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    for t in ticks:
        if lo - 1e-9 <= t <= hi + 1e-9:
            d.line([x0, Y(t), x1, Y(t)], fill=GRID, width=1)
            d.text((x0 - 10, Y(t)), _fmt(t, step), font=f_small, fill=FG, anchor="rm")
    xt = [t for t in nice_ticks(0, max(1, frames - 1), target=min(10, max(1, frames - 1))) if t == int(t)]
    for t in xt:
        if t <= frames - 1:
            d.line([X(t), y1, X(t), y1 + 6], fill=AXIS, width=2)
            d.text((X(t), y1 + 9), str(int(t)), font=f_small, fill=FG, anchor="ma")
    d.rectangle([x0, y0, x1, y1], outline=AXIS, width=2)
    pts = [(X(i), Y(v)) for i, v in enumerate(values)]
    if n > 1:
        d.line(pts, fill=color, width=3, joint="curve")
    r = 4 if n <= 60 else 2
    for (px, py), v in zip(pts, values):
        if psnr_panel and v >= PSNR_CAP_DB:  # identical frame: hollow marker at the cap
            d.ellipse([px - r - 1, py - r - 1, px + r + 1, py + r + 1], outline=color, width=2, fill=BG)
        else:
            d.ellipse([px - r, py - r, px + r, py + r], fill=color)


def _range(values, must_lo, must_hi, pad, floor_lo=None, ceil_hi=None):
    lo = min(min(values), must_lo) - pad
    hi = max(max(values), must_hi) + pad
    if floor_lo is not None:
        lo = max(lo, floor_lo)
    if ceil_hi is not None:
        hi = min(hi, ceil_hi)
    ticks = nice_ticks(lo, hi)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else pad
    return math.floor(lo / step) * step, math.ceil(hi / step - 1e-9) * step


def plot_image(psnr: list[float], ssim: list[float], width: int = 1200, height: int = 760) -> torch.Tensor:
    """IMAGE [1, height, width, 3] float in [0, 1]."""
    from PIL import Image, ImageDraw
    n = len(psnr)
    if n == 0 or len(ssim) != n or not all(math.isfinite(v) for v in list(psnr) + list(ssim)):
        raise ValueError("AdaCluster Compare plot: needs one finite PSNR and SSIM per frame")
    img = Image.new("RGB", (width, height), BG)
    d = ImageDraw.Draw(img)
    f_title, f_label, f_small = _font(30, bold=True), _font(23, bold=True), _font(20)
    mean_p, mean_s = sum(psnr) / n, sum(ssim) / n
    d.text((24, 16), f"AdaCluster A/B: test vs reference, {n} frame(s)", font=f_title, fill=FG)
    capped = sum(1 for p in psnr if p >= PSNR_CAP_DB)
    sub = f"mean PSNR {mean_p:.2f} dB    mean SSIM {mean_s:.4f}    worst frame {min(range(n), key=psnr.__getitem__)}"
    if capped:
        sub += f"    ({capped} identical frame(s), PSNR shown at the {PSNR_CAP_DB:g} dB cap)"
    d.text((24, 58), sub, font=f_small, fill=AXIS)
    left, right = 100, width - 30
    top1, bot1 = 136, 136 + (height - 136 - 110) // 2 - 20
    top2, bot2 = bot1 + 78, height - 66
    p_lo, p_hi = _range(psnr, LOOK_CLOSER_PSNR_DB - 3, PAPER_PSNR_DB[1] + 1, 1.0, floor_lo=0.0,
                        ceil_hi=PSNR_CAP_DB + 2)
    s_lo, s_hi = _range(ssim, 0.9, 1.0, 0.01, ceil_hi=1.0)
    _panel(d, (left, top1, right, bot1), psnr, p_lo, p_hi, PSNR_COLOR, "PSNR (dB, higher = closer)",
           n, (f_small, f_label), psnr_panel=True)
    _panel(d, (left, top2, right, bot2), ssim, s_lo, s_hi, SSIM_COLOR, "SSIM (1 = identical)",
           n, (f_small, f_label), psnr_panel=False)
    d.text(((left + right) / 2, height - 20), "frame", font=f_label, fill=FG, anchor="mm")
    import numpy as np
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).unsqueeze(0)
