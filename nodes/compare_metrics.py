"""Frame metrics for the AdaCluster Compare node: per-frame PSNR / SSIM of a test video against a
reference (the same seed and prompt sampled dense), the amplified difference video, and the
report (text + JSON-able dict).

Pure torch (no ComfyUI import, no kornia: that package's newer releases require a newer torch
than some ComfyUI installs have, and pip would replace ComfyUI's torch to get it), so the tests can
call it directly. The metrics are the standard ones, evaluated frame by frame on RGB in [0, 1]:
PSNR = 10 log10(1 / MSE) and SSIM with a Gaussian window of 11 taps, sigma 1.5, C1 = 0.01²,
C2 = 0.03², the moments filtered separably with reflect padding and the borders cropped ("valid");
the same numbers as `kornia.metrics.psnr` / `kornia.metrics.ssim` (tests/comfy/test_compare.py
checks that against kornia where it is installed, and against a direct formula).
"""
from __future__ import annotations

import math
from typing import Any

import torch

# Identical frames have an infinite PSNR; JSON has no infinity and one identical frame would make
# the mean infinite too, so every per-frame PSNR is capped here (documented in the README).
PSNR_CAP_DB = 100.0
SSIM_WINDOW = 11
# Reading guide (dB vs the dense run at the same seed): the AdaCluster paper reports 29-31 dB;
# below about 25 dB the difference is usually visible.
PAPER_PSNR_DB = (29.0, 31.0)
LOOK_CLOSER_PSNR_DB = 25.0
SSIM_SIGMA = 1.5
SSIM_C1, SSIM_C2 = 0.01 ** 2, 0.03 ** 2   # (k1 L)², (k2 L)² for L = 1
SSIM_EPS = 1e-12                           # added to the denominator (as kornia does)
FRAMES_PER_CHUNK = 8  # bounds the SSIM buffers (5 filtered copies per frame) on long videos
REPORT_VERSION = 1
DIFF_GAIN_RANGE = (1.0, 100.0)   # the diff_gain widget's bounds (also enforced on linked values)
# the verdict reads the worst frame too: its band is taken from min(mean, worst frame + this), so a
# frame far below the rest (a broken or drifted frame) pulls the reading down; ordinary frame-to-frame
# spread (a few dB) does not
WORST_FRAME_SLACK_DB = 4.0


class CompareInputError(ValueError):
    """The two IMAGE batches cannot be compared frame by frame (the message names the input)."""


def _describe(x: torch.Tensor) -> str:
    if x.dim() != 4:
        return f"a tensor of shape {list(x.shape)}"
    return f"{x.shape[0]} frame(s) of {x.shape[2]}x{x.shape[1]} (WxH) with {x.shape[3]} channel(s)"


def check_inputs(reference: torch.Tensor, test: torch.Tensor) -> None:
    """Raise CompareInputError naming the offending input when the batches don't line up."""
    for name, x in (("reference", reference), ("test", test)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] < 1 or x.shape[-1] not in (1, 3, 4):
            raise CompareInputError(f"`{name}` is not an IMAGE batch [frames, height, width, channels]: "
                                    f"got {_describe(x) if isinstance(x, torch.Tensor) else type(x).__name__}")
    hint = ("decode both runs from the same latent size and length (one Empty Latent node feeding both "
            "samplers, same seed)")
    if reference.shape[0] != test.shape[0]:
        raise CompareInputError(f"frame counts differ: `test` has {test.shape[0]} frame(s), `reference` has "
                                f"{reference.shape[0]}: {hint}")
    if reference.shape[1:3] != test.shape[1:3]:
        raise CompareInputError(f"frame sizes differ: `test` is {test.shape[2]}x{test.shape[1]} (WxH), "
                                f"`reference` is {reference.shape[2]}x{reference.shape[1]}: {hint}")
    if reference.shape[3] != test.shape[3]:
        raise CompareInputError(f"channel counts differ: `test` has {test.shape[3]}, `reference` has "
                                f"{reference.shape[3]} (compare RGB with RGB)")


def first_non_finite_frame(x: torch.Tensor) -> int | None:
    """Index of the first frame holding a NaN / Inf pixel (None: all finite); chunked, no full copy."""
    for s in range(0, x.shape[0], FRAMES_PER_CHUNK):
        ok = torch.isfinite(x[s:s + FRAMES_PER_CHUNK]).flatten(1).all(dim=1)
        if not bool(ok.all()):
            return s + int((~ok).nonzero()[0, 0])
    return None


def check_finite(reference: torch.Tensor, test: torch.Tensor) -> None:
    """CompareInputError naming the input and the frame when a pixel is NaN / Inf: such a frame has
    no PSNR (it must never read as "identical") and a NaN would break the UI's JSON."""
    for name, x in (("reference", reference), ("test", test)):
        i = first_non_finite_frame(x)
        if i is not None:
            n_bad = sum(1 for s in range(0, x.shape[0], FRAMES_PER_CHUNK)
                        for ok in torch.isfinite(x[s:s + FRAMES_PER_CHUNK]).flatten(1).all(dim=1).tolist() if not ok)
            whole = " (every frame)" if n_bad == x.shape[0] else f" ({n_bad} of {x.shape[0]} frames)"
            raise CompareInputError(f"`{name}` frame {i} has non-finite pixels (NaN / Inf){whole}: the decoded "
                                    "video is broken, so it cannot be compared (look at the sampler / VAE of that "
                                    "branch: a NaN latent, an fp16 overflow)")


def check_gain(gain) -> float:
    """diff_gain as a float in DIFF_GAIN_RANGE (CompareInputError naming it otherwise; NaN passes
    ComfyUI's own min / max check, so it is checked here)."""
    lo, hi = DIFF_GAIN_RANGE
    ok = isinstance(gain, (int, float)) and not isinstance(gain, bool) and math.isfinite(float(gain)) \
        and lo <= float(gain) <= hi
    if not ok:
        raise CompareInputError(f"diff_gain must be a finite number in [{lo:g}, {hi:g}], got {str(gain)[:40]}")
    return float(gain)


def _rgb(x: torch.Tensor) -> torch.Tensor:
    """IMAGE [F, H, W, C] -> [F, C, H, W] float32 in [0, 1], colour channels only (alpha dropped)."""
    x = x[..., :3] if x.shape[-1] == 4 else x
    return x.permute(0, 3, 1, 2).to(torch.float32).clamp(0.0, 1.0)


def ssim_window(height: int, width: int) -> int:
    """The standard 11 px window, shrunk (odd, >= 3) for frames smaller than that."""
    w = min(SSIM_WINDOW, height, width)
    return max(3, w if w % 2 else w - 1)


def psnr_db(test: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR (dB) of one frame pair in [0, 1], uncapped (inf for identical frames)."""
    mse = float(torch.mean((test.to(torch.float32) - reference.to(torch.float32)) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def _gaussian_1d(window: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(window, device=device, dtype=dtype) - (window // 2)
    g = torch.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def ssim_map(test: torch.Tensor, reference: torch.Tensor, window: int, padding: str = "valid") -> torch.Tensor:
    """SSIM map [B, C, H', W'] of two [B, C, H, W] batches in [0, 1]: Gaussian window (`window` taps,
    sigma 1.5), the local moments filtered separably with reflect padding; "valid" crops window // 2
    pixels on every side (the original paper's border handling), "same" keeps the size."""
    x = test.to(torch.float32)
    y = reference.to(torch.float32)
    C, r = x.shape[1], window // 2
    g = _gaussian_1d(window, SSIM_SIGMA, x.device, x.dtype)
    wx = g.view(1, 1, 1, -1).expand(C, 1, 1, -1)
    wy = g.view(1, 1, -1, 1).expand(C, 1, -1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        t = torch.nn.functional.conv2d(torch.nn.functional.pad(t, [r, r, 0, 0], mode="reflect"), wx, groups=C)
        t = torch.nn.functional.conv2d(torch.nn.functional.pad(t, [0, 0, r, r], mode="reflect"), wy, groups=C)
        return t[..., r:t.shape[-2] - r, r:t.shape[-1] - r] if padding == "valid" else t

    mu_x, mu_y = blur(x), blur(y)
    mu_xy, mu_xx, mu_yy = mu_x * mu_y, mu_x * mu_x, mu_y * mu_y
    s_xx = blur(x * x) - mu_xx
    s_yy = blur(y * y) - mu_yy
    s_xy = blur(x * y) - mu_xy
    num = (2.0 * mu_xy + SSIM_C1) * (2.0 * s_xy + SSIM_C2)
    den = (mu_xx + mu_yy + SSIM_C1) * (s_xx + s_yy + SSIM_C2)
    return num / (den + SSIM_EPS)


def frame_metrics(reference: torch.Tensor, test: torch.Tensor, device: torch.device | str | None = None
                  ) -> tuple[list[float], list[float]]:
    """Per-frame PSNR (dB, capped at PSNR_CAP_DB) and SSIM (mean over pixels and channels)."""
    check_inputs(reference, test)
    check_finite(reference, test)
    F, H, W = reference.shape[0], reference.shape[1], reference.shape[2]
    if min(H, W) < 3:
        raise CompareInputError(f"frames of {W}x{H} are too small for SSIM (need at least 3x3)")
    win = ssim_window(H, W)
    padding = "valid" if min(H, W) >= win + 2 else "same"
    device = torch.device(device) if device is not None else reference.device
    psnr: list[float] = []
    ssim: list[float] = []
    with torch.no_grad():
        for s in range(0, F, FRAMES_PER_CHUNK):
            r = _rgb(reference[s:s + FRAMES_PER_CHUNK]).to(device)
            t = _rgb(test[s:s + FRAMES_PER_CHUNK]).to(device)
            for i in range(r.shape[0]):
                p = psnr_db(t[i], r[i])
                if math.isnan(p):   # not reachable with finite inputs: never let it read as "identical"
                    raise CompareInputError(f"frame {s + i}: PSNR is NaN")
                psnr.append(min(p, PSNR_CAP_DB))   # +inf (MSE 0: identical) -> the cap
            smap = ssim_map(t, r, win, padding=padding)
            vals = [float(v) for v in smap.mean(dim=(1, 2, 3)).cpu()]
            if not all(math.isfinite(v) for v in vals):
                raise CompareInputError(f"frames {s}-{s + len(vals) - 1}: SSIM is not finite")
            ssim.extend(vals)
    return psnr, ssim


def difference_video(reference: torch.Tensor, test: torch.Tensor, gain: float) -> torch.Tensor:
    """IMAGE [F, H, W, 3]: |reference - test| x gain, clipped to [0, 1] (black = no change)."""
    check_inputs(reference, test)
    gain = check_gain(gain)
    c = 3 if reference.shape[-1] == 4 else reference.shape[-1]
    d = test[..., :c].to(torch.float32).clamp(0.0, 1.0)  # one new buffer, then in place
    d.sub_(reference[..., :c].to(torch.float32).clamp(0.0, 1.0)).abs_().mul_(float(gain)).clamp_(0.0, 1.0)
    if c == 1:
        d = d.expand(*d.shape[:3], 3)
    return d.contiguous().cpu()


def verdict(psnr_mean: float, psnr_min: float | None = None, worst_frame: int | None = None) -> str:
    """The reading of the numbers: the band of min(mean, worst frame + WORST_FRAME_SLACK_DB), so one
    frame far below the rest pulls it down (a video with one broken frame is not "as close to dense
    as the paper"); the text then names that frame."""
    if psnr_min is None:
        psnr_min = psnr_mean
    if psnr_min >= PSNR_CAP_DB:
        return "identical: the test frames equal the reference (is AdaCluster enabled on the test branch?)"
    judged = min(psnr_mean, psnr_min + WORST_FRAME_SLACK_DB)
    if _band(judged) != _band(psnr_mean):
        where = f"frame {worst_frame}" if worst_frame is not None else "the worst frame"
        return f"{where} is at {psnr_min:.1f} dB, far below the mean ({psnr_mean:.1f} dB): " + _band(judged)
    return _band(judged)


def _band(psnr: float) -> str:
    lo, hi = PAPER_PSNR_DB
    if psnr >= lo:
        return f">= {lo:g} dB: as close to dense as the paper's results ({lo:g}-{hi:g} dB); a faster preset may still hold"
    if psnr >= LOOK_CLOSER_PSNR_DB:
        return (f"{LOOK_CLOSER_PSNR_DB:g}-{lo:g} dB: below the paper's range; watch both videos side by side "
                "(fine detail, faces, flicker) and try the `quality` preset if it shows")
    return (f"< {LOOK_CLOSER_PSNR_DB:g} dB: the sparse run moved away from dense: run with probe = on and see "
            "AdaCluster Stats' worst layers, then follow the README's tuning advice (quality preset, "
            "more dense layers, more warmup)")


def build_report(psnr: list[float], ssim: list[float], sparse_run: dict | None = None) -> dict[str, Any]:
    """The JSON-able report of one comparison (also the node's `json` output). Every number is
    finite (ValueError otherwise): JSON has no NaN / Inf, and the browser's parser rejects them."""
    n = len(psnr)
    if n == 0 or len(ssim) != n:
        raise CompareInputError("no frames to report")
    if not all(math.isfinite(v) for v in list(psnr) + list(ssim)):
        raise CompareInputError("a per-frame PSNR / SSIM is not finite")
    mean_p = sum(psnr) / n
    mean_s = sum(ssim) / n
    worst = min(range(n), key=lambda i: psnr[i])
    return {
        "version": REPORT_VERSION,
        "frames": n,
        "psnr_mean_db": mean_p,
        "psnr_min_db": min(psnr),
        "ssim_mean": mean_s,
        "ssim_min": min(ssim),
        "worst_frame": worst,
        "identical_frames": sum(1 for p in psnr if p >= PSNR_CAP_DB),
        "psnr_cap_db": PSNR_CAP_DB,
        "ssim_window": None,  # filled by the caller (depends on the frame size)
        "reference_point": {"paper_psnr_db": list(PAPER_PSNR_DB), "look_closer_below_db": LOOK_CLOSER_PSNR_DB},
        "verdict": verdict(mean_p, min(psnr), worst),
        "per_frame": {"psnr_db": psnr, "ssim": ssim},
        "sparse_run": sparse_run,
    }


def format_report(rep: dict[str, Any]) -> str:
    lines = [f"AdaCluster Compare: test vs reference over {rep['frames']} frame(s)",
             f"PSNR  mean {rep['psnr_mean_db']:.2f} dB   min {rep['psnr_min_db']:.2f} dB (frame {rep['worst_frame']})"
             + (f"   (capped at {rep['psnr_cap_db']:g} dB: {rep['identical_frames']} identical frame(s))"
                if rep["identical_frames"] else ""),
             f"SSIM  mean {rep['ssim_mean']:.4f}   min {rep['ssim_min']:.4f}",
             f"reading: {rep['verdict']}"]
    sr = rep.get("sparse_run")
    if sr:
        dens = sr.get("mean_density")
        lines.append(f"sparse run: {sr.get('family')} preset {sr.get('preset')}, {sr.get('sparse_calls')}/"
                     f"{sr.get('calls')} attention calls sparse"
                     + (f", mean density {dens:.3f}" if dens is not None else "")
                     + f", est. attention FLOPs saved {100 * (sr.get('flops_saved_frac') or 0):.1f}%")
    lines.append("per frame (PSNR dB / SSIM):")
    row = []
    for i, (p, s) in enumerate(zip(rep["per_frame"]["psnr_db"], rep["per_frame"]["ssim"])):
        row.append(f"{i:>3}: {p:6.2f} / {s:.4f}")
        if len(row) == 4:
            lines.append("  " + "   ".join(row))
            row = []
    if row:
        lines.append("  " + "   ".join(row))
    return "\n".join(lines)


SPARSE_RUN_KEYS = ("family", "preset", "calls", "sparse_calls", "dense_calls", "mean_density", "flops_saved_frac",
                   "attention_time_s", "run_wall_s", "dense_reasons")


def _finite(obj):
    """obj with every non-finite float replaced by None (JSON has no NaN / Inf)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def sparse_run_summary(stats: dict | None) -> dict | None:
    """The few Stats fields that belong next to the quality numbers (to tabulate presets)."""
    if not stats or not stats.get("calls"):
        return None
    out = {k: stats.get(k) for k in SPARSE_RUN_KEYS}
    probe = stats.get("probe") or {}
    if probe.get("calls"):  # probe = on: the layers to look at first when the PSNR is low
        out["probe_worst_layers"] = [w.get("layer") for w in (probe.get("worst_layers") or [])[:5]]
    return _finite(out)
