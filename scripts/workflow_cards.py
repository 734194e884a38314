"""The .jpg card of each bundled workflow (scripts/build_workflows.py): a small template card
drawn with Pillow (title, subtitle, the node chain, a block-sparse mask)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence


def _font(size: int, bold: bool = False):
    from PIL import ImageFont
    names = (["DejaVuSans-Bold.ttf", "LiberationSans-Bold.ttf"] if bold else ["DejaVuSans.ttf", "LiberationSans-Regular.ttf"])
    for n in names:
        for d in ("/usr/share/fonts/truetype/dejavu/", "/usr/share/fonts/truetype/liberation/", ""):
            try:
                return ImageFont.truetype(d + n, size)
            except OSError:
                continue
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def draw_card(path: Path, title: str, subtitle: str, accent: str, boxes: Optional[Sequence[str]] = None,
              size=(512, 384)) -> None:
    """A small template card: title, subtitle and a diagram of the node chain (`boxes`, the 4th in
    grey) + a sparse block mask."""
    import random

    from PIL import Image, ImageDraw
    W = size[0]
    img = Image.new("RGB", size, "#1c1f24")
    d = ImageDraw.Draw(img)
    d.rectangle([0, 0, W, 6], fill=accent)
    d.text((24, 22), title, font=_font(30, bold=True), fill="#f2f2f2")
    d.text((24, 62), subtitle, font=_font(18), fill="#b8c0cc")
    # node chain
    boxes = list(boxes or ["Thresholds", "Layers", "Sparse Attn", "KSampler", "Stats"])
    x, y, bw, bh, gap = 18, 112, 84, 34, 12
    for i, label in enumerate(boxes):
        fill = accent if i != 3 else "#3a3f48"
        d.rounded_rectangle([x, y, x + bw, y + bh], radius=6, fill=fill, outline="#e6e6e6")
        f = _font(12, bold=True)
        tw = d.textlength(label, font=f)
        d.text((x + (bw - tw) / 2, y + 10), label, font=f, fill="#ffffff")
        if i < len(boxes) - 1:
            d.line([x + bw, y + bh / 2, x + bw + gap, y + bh / 2], fill="#e6e6e6", width=2)
        x += bw + gap
    # block-sparse attention mask: query clusters x key clusters, a few kept per row
    rng = random.Random(title)
    n, cell, ox, oy = 16, 12, 24, 170
    for r in range(n):
        keep = {r} | set(rng.sample(range(n), 4))
        for c in range(n):
            col = accent if c in keep else "#2b3038"
            d.rectangle([ox + c * cell, oy + r * cell, ox + c * cell + cell - 2, oy + r * cell + cell - 2], fill=col)
    f = _font(16)
    d.text((ox + n * cell + 24, oy + 10), "AdaCluster", font=_font(22, bold=True), fill="#f2f2f2")
    for i, line in enumerate(["clustered block-sparse", "self-attention (Triton)", "", "query clusters x key clusters:",
                              "keep top-k per row"]):
        d.text((ox + n * cell + 24, oy + 44 + 20 * i), line, font=f, fill="#b8c0cc")
    img.save(path, "JPEG", quality=85, optimize=True)

