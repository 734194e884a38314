"""Structured attention inputs that behave like the self-attention of a video DiT.

Random Gaussian Q/K/V are the wrong test bed for sparse attention: their attention maps are
nearly uniform, so every sparse method looks equally bad. What a video DiT hands to its
attention after QK-norm and RoPE has structure, and that structure is what sparse methods
exploit. This module builds inputs that have it, cheaply (O(N·D) work, no N×N tensor, all
vectorised), at any size up to the 176K-token shapes of the speed benchmark.

``make_structured_qkv`` -- synthetic, fully controllable
---------------------------------------------------------
Tokens sit on a ``(t, h, w)`` raster grid (``w`` fastest, as video DiTs flatten latents),
optionally followed by ``text_tokens`` prompt tokens. Per batch element:

1. **Smooth content.** A token's content vector is a Gaussian random field of its position:
   random Fourier features ``cos(Ω·p + b)`` of the (camera-panned) grid coordinates with
   low frequencies (correlation length ``smooth`` × the spatial extent, ``smooth_t`` frames in
   time), mixed to ``D`` channels by a random matrix. Nearby tokens, in space and in time,
   carry similar content.
2. **Semantic groups.** ``n_groups`` irregular segments ("objects"): warped Voronoi cells of
   centres that move with the camera pan plus a motion of their own (the frame is periodic,
   so none leaves it), with random sizes; a smooth random field warps the cell boundaries. All tokens of a segment share a group embedding (weight
   ``group_strength``); tokens of one object attend to each other wherever they are, which
   raster blocks cannot follow but clustering can.
3. **Per-head projections with QK similarity.** ``q0 = c·Wq``, ``k0 = c·Wk`` with
   ``Wk = ρ·Wq + sqrt(1-ρ²)·R`` (``ρ = qk_corr``): similar content gives a large ``q·k``,
   the "attend to what looks like you" behaviour of semantic heads. A shared positional
   vector of weight ``locality`` is added to both, then RMS QK-norm and a Wan-style **3D
   RoPE** (head dim split t:h:w = 44:42:42 for D=128, base 10000) are applied: the rotary
   phases turn the shared component into a decaying function of the grid offset, i.e. the
   strong local (diagonal) attention of video DiTs.
4. **Varying query norms.** Each query is multiplied by ``temperature · exp(qnorm_sigma·z)``,
   ``z ~ N(0,1)``: the norm acts as a per-query softmax temperature (log-normal, as measured
   norms in DiTs are), so some queries are sharp and some diffuse.
5. **Sinks.** Queries share a bias direction living on the lowest-frequency RoPE pairs
   (position-independent after rotation). ``sink_keys`` keys get a large component along it,
   so queries from everywhere put a sizeable share of their mass on them.
6. **Text tokens** (optional, appended after the video tokens): independent random content
   drawn from a few "words", no RoPE, keys of the same norm as video keys.

7. **QK-norm gains** (optional, ``channel_gain_sigma``, default 0): per-channel log-normal
   gains after the RMS norm, as the learned weights of a trained model's QK-norm have. They
   make a few channels dominate the scores; the fidelity benchmark reports this regime
   separately because it changes the comparison between methods a lot.

V is a separate projection of the same content plus noise, so the attention output is
smooth where the map is.

Calibration (defaults; ``attention_peakedness`` on 256 sampled queries, bf16, H=2, seed 0):

    grid        N       entropy/log N   top-15 % mass   keys for 90 %   sink mass
    (6,16,16)   1,536   0.64            0.91            0.14            0.12
    (8,24,32)   6,144   0.72            0.88            0.18            0.05
    (13,30,52)  20,280  0.75            0.88            0.18            0.03

(uniform attention: 1.0 / 0.15 / 0.90; i.i.d. Gaussian q, k of the same norm: ≈0.93 / 0.48).
Video DiT heads are reported to need roughly 10-30 % of keys for 90 % of the mass, which is
where these defaults sit; ``temperature`` moves the whole distribution (higher = sharper).

``make_video_qkv`` -- real frames
---------------------------------
Patchifies a clip ``[T, H, W, 3]`` like a DiT (VAE + patch embedding stride, default 4
frames × 16 × 16 pixels per token), embeds each patch with a fixed random two-layer
projection (so colour/texture similarity between patches becomes feature similarity), and
then follows steps 3-4 above (correlated per-head Wq/Wk, QK-norm, 3D RoPE, log-normal query
norms). No sinks are added: whatever concentrates attention comes from the video content.

Both functions are deterministic for a given (arguments, device): parameters come from a
seeded ``torch.Generator``; per-token noise from one on the target device.
"""
from __future__ import annotations

import math
from typing import Any

import torch

__all__ = [
    "make_structured_qkv",
    "make_video_qkv",
    "rope_3d",
    "grid_positions",
    "attention_peakedness",
    "procedural_video",
]


# ----------------------------------------------------------------------------- helpers

def grid_positions(grid: tuple[int, int, int], device: torch.device | str = "cpu") -> torch.Tensor:
    """Integer (t, h, w) coordinates of a raster grid, w fastest: float32 [t·h·w, 3]."""
    t, h, w = grid
    tt, hh, ww = torch.meshgrid(
        torch.arange(t, device=device), torch.arange(h, device=device), torch.arange(w, device=device),
        indexing="ij",
    )
    return torch.stack([tt, hh, ww], -1).reshape(-1, 3).float()


def _rope_axis_dims(D: int) -> tuple[int, int, int]:
    """Wan 2.1's split of the head dim among (t, h, w) rotary axes (each even)."""
    d = D // 2  # complex pairs
    dh = dw = d // 3
    dt = d - dh - dw
    return 2 * dt, 2 * dh, 2 * dw


def _rope_angles(pos: torch.Tensor, D: int, base: float = 10000.0) -> torch.Tensor:
    """Rotation angle of every pair for every position: float32 [N, D/2]. Pairs are ordered
    (t-pairs, h-pairs, w-pairs), frequencies base^(-2i/d_axis) within an axis."""
    angs = []
    for axis, da in enumerate(_rope_axis_dims(D)):
        inv = base ** (-torch.arange(0, da, 2, device=pos.device, dtype=torch.float32) / da)
        angs.append(pos[:, axis : axis + 1] * inv[None, :])
    return torch.cat(angs, -1)


def rope_3d(x: torch.Tensor, pos: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Apply 3D rotary embedding to x [..., N, D] (fp32) at positions pos [N, 3] (interleaved
    pairs (2i, 2i+1), as Wan does)."""
    D = x.shape[-1]
    ang = _rope_angles(pos, D, base)  # [N, D/2]
    cos, sin = ang.cos(), ang.sin()
    x2 = x.reshape(*x.shape[:-1], D // 2, 2)
    a, b = x2[..., 0], x2[..., 1]
    out = torch.stack([a * cos - b * sin, a * sin + b * cos], -1)
    return out.reshape(x.shape)


def _low_freq_mask(D: int, pairs_per_axis: int = 3) -> torch.Tensor:
    """Indicator [D] of the dims of the slowest-rotating pairs of each RoPE axis: a vector that
    lives there is (almost) unchanged by RoPE anywhere on the grid."""
    m = torch.zeros(D)
    off = 0
    for da in _rope_axis_dims(D):
        npairs = da // 2
        for p in range(max(0, npairs - pairs_per_axis), npairs):
            m[off + 2 * p] = 1
            m[off + 2 * p + 1] = 1
        off += da
    return m


def _rms_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _rff(coords: torch.Tensor, n_feat: int, length: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random Fourier features of coords [N, 3] for an RBF kernel with per-axis length scales
    `length` [3]: sqrt(2/M)·cos(coords/length·Ω + b), float32 [N, M]."""
    omega = torch.randn(3, n_feat, generator=gen) / length.view(3, 1)
    phase = torch.rand(n_feat, generator=gen) * 2 * math.pi
    omega, phase = omega.to(coords.device), phase.to(coords.device)
    return math.sqrt(2.0 / n_feat) * torch.cos(coords @ omega + phase)


def _segments(coords: torch.Tensor, hw: tuple[int, int], n_groups: int, length: torch.Tensor,
              gen: torch.Generator, pan: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """Segment id per token [N]: nearest of n_groups centres (uniform on the first frame,
    moving with the camera pan plus up to ±0.3 token/frame of their own, each with its own
    size), distance warped by a smooth random field so that cells are irregular blobs.
    O(N·n_groups)."""
    h, w = hw
    dev = coords.device
    c0 = torch.rand(n_groups, 2, generator=gen) * torch.tensor([float(h), float(w)])
    vel = (torch.rand(n_groups, 2, generator=gen) - 0.5) * 0.6 + torch.tensor([pan[0], pan[1]])
    size = torch.exp(0.25 * torch.randn(n_groups, generator=gen))
    feat = _rff(coords, 64, length, gen)
    warp = (feat @ torch.randn(64, n_groups, generator=gen).to(dev))   # ~N(0, 1) per group
    c0, vel, size = c0.to(dev), vel.to(dev), size.to(dev)
    cen = c0[None] + coords[:, :1, None] * vel[None]                  # [N, G, 2]
    L = torch.tensor([float(h), float(w)], device=dev)
    delta = torch.remainder(coords[:, None, 1:] - cen, L)               # periodic frame:
    delta = torch.minimum(delta, L - delta)                               # objects wrap around
    d2 = (delta ** 2).sum(-1) / (size[None] ** 2)                         # [N, G]
    cell = float(h * w) / max(1, n_groups)                              # mean cell area
    return torch.argmin(d2 / cell + 0.08 * warp, dim=-1)


def _device_gen(device: torch.device, seed: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


# ----------------------------------------------------------------------------- projections

def _project_heads(
    content: torch.Tensor,        # [N, Dc] float32, roughly unit variance per channel
    pos: torch.Tensor,            # [N, 3]
    H: int,
    D: int,
    gen: torch.Generator,
    noise_gen: torch.Generator,
    *,
    qk_corr: float,
    locality: float,
    qnorm_sigma: float,
    temperature: float,
    query_bias: float,
    noise: float,
    channel_gain_sigma: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-head Q/K/V [H, N, D] (float32) from content; also returns the query-bias
    directions [H, D] (unit, on low-frequency RoPE dims)."""
    N, Dc = content.shape
    dev = content.device
    wq = torch.randn(H, Dc, D, generator=gen) / math.sqrt(Dc)
    wr = torch.randn(H, Dc, D, generator=gen) / math.sqrt(Dc)
    wk = qk_corr * wq + math.sqrt(max(0.0, 1 - qk_corr ** 2)) * wr
    wv = torch.randn(H, Dc, D, generator=gen) / math.sqrt(Dc)
    shared = torch.randn(H, 1, D, generator=gen)      # positional component (q and k)
    lowf = _low_freq_mask(D)
    mu = torch.randn(H, D, generator=gen) * lowf
    mu = mu / mu.norm(dim=-1, keepdim=True)
    # learned QK-norm gains: per head and channel, log-normal, shared by q and k up to noise
    zg = torch.randn(H, 1, D, generator=gen)
    gq = torch.exp(channel_gain_sigma * zg)
    gk = torch.exp(channel_gain_sigma * (0.8 * zg + 0.6 * torch.randn(H, 1, D, generator=gen)))
    wq, wk, wv, shared, mu, gq, gk = (x.to(dev) for x in (wq, wk, wv, shared, mu, gq, gk))

    x = content.unsqueeze(0)                           # [1, N, Dc]
    q0 = torch.matmul(x, wq) + locality * shared + query_bias * math.sqrt(D) * mu.unsqueeze(1)
    k0 = torch.matmul(x, wk) + locality * shared
    if noise > 0:
        q0 = q0 + noise * torch.randn(q0.shape, generator=noise_gen, device=dev)
        k0 = k0 + noise * torch.randn(k0.shape, generator=noise_gen, device=dev)
    q = rope_3d(_rms_norm(q0) * gq / gq.pow(2).mean().sqrt(), pos)
    k = rope_3d(_rms_norm(k0) * gk / gk.pow(2).mean().sqrt(), pos)
    z = torch.randn(H, N, 1, generator=noise_gen, device=dev)
    q = q * (temperature * torch.exp(qnorm_sigma * z))
    v = torch.matmul(x, wv)
    v = v + 0.5 * torch.randn(v.shape, generator=noise_gen, device=dev)
    return q, k, v, mu


# ----------------------------------------------------------------------------- structured

def _pan_geometry(grid: tuple[int, int, int], pan: tuple[float, float], smooth: float, smooth_t: float,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grid positions [n, 3], their camera-panned copy (content moves across the grid over time),
    and the correlation lengths (t, h, w) of the content field and of the segment warp."""
    t, h, w = grid
    pos = grid_positions(grid, device)
    panned = pos.clone()
    panned[:, 1] -= pan[0] * pos[:, 0]
    panned[:, 2] -= pan[1] * pos[:, 0]
    ext = float(max(h, w))
    length = torch.tensor([smooth_t, smooth * ext, smooth * ext])
    length_g = torch.tensor([smooth_t * 1.5, smooth * ext * 1.5, smooth * ext * 1.5])
    return pos, panned, length, length_g


def _video_content(pos: torch.Tensor, panned: torch.Tensor, hw: tuple[int, int], D: int, n_groups: int,
                   group_strength: float, lengths: tuple[torch.Tensor, torch.Tensor], pan: tuple[float, float],
                   gen: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 1-2 of the model: (content [n, D] with unit std per channel, segment id [n])."""
    length, length_g = lengths
    # 1. smooth content field
    feat = _rff(panned, 96, length, gen)                          # [n, 96]
    A = (torch.randn(96, D, generator=gen)).to(device)
    smooth_c = feat @ A                                           # ~unit variance
    # 2. segments: warped Voronoi cells of n_groups drifting centres
    gid = _segments(pos, hw, n_groups, length_g, gen, pan)        # [n]
    E = torch.randn(n_groups, D, generator=gen).to(device)
    content = smooth_c + group_strength * E[gid]
    content = content / content.std(dim=0, keepdim=True).clamp_min(1e-6)
    return content, gid


def _with_text(content: torch.Tensor, pos: torch.Tensor, text_tokens: int, D: int, gen: torch.Generator,
               ngen: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 6: text tokens appended after the video tokens, a few "words", random content, position 0
    (identity RoPE). Returns (content, positions) of all tokens."""
    if not text_tokens:
        return content, pos
    words = torch.randn(max(1, text_tokens // 8), D, generator=gen).to(device)
    wid = torch.randint(0, words.shape[0], (text_tokens,), generator=gen).to(device)
    tcontent = words[wid] + 0.5 * torch.randn(text_tokens, D, generator=ngen, device=device)
    return torch.cat([content, tcontent], 0), torch.cat([pos, torch.zeros(text_tokens, 3, device=device)], 0)


def _add_sinks(k: torch.Tensor, mu: torch.Tensor, n_video: int, sink_keys: int, sink_strength: float, D: int,
               gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """Step 5: a large key component along the (RoPE-invariant) query bias direction `mu` for
    min(sink_keys, n_video) random video keys, in place on k [H, N, D]. Returns their indices."""
    ns = min(sink_keys, n_video)
    sidx = torch.randperm(n_video, generator=gen)[:ns].to(device)
    if ns:
        k[:, sidx] = k[:, sidx] + sink_strength * math.sqrt(D) * mu.unsqueeze(1)
    return sidx


def make_structured_qkv(
    B: int = 1,
    H: int = 2,
    grid: tuple[int, int, int] = (6, 16, 16),
    D: int = 128,
    *,
    n_groups: int = 8,
    smooth: float = 0.3,
    smooth_t: float = 6.0,
    group_strength: float = 1.0,
    qk_corr: float = 0.8,
    locality: float = 0.8,
    temperature: float = 1.4,
    qnorm_sigma: float = 0.3,
    sink_keys: int = 4,
    sink_strength: float = 0.7,
    query_bias: float = 0.5,
    noise: float = 0.3,
    channel_gain_sigma: float = 0.0,
    pan: tuple[float, float] = (0.5, 0.8),
    text_tokens: int = 0,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Video-DiT-like q, k, v [B, H, N, D] with N = t·h·w + text_tokens (text last).

    Arguments (see the module docstring for the model):
      grid: (t, h, w) latent grid, flattened w fastest.
      n_groups: number of semantic segments; group_strength: weight of their shared embedding.
      smooth: spatial correlation length of the content field, as a fraction of max(h, w);
      smooth_t: its temporal correlation length, in latent frames; pan: camera motion
        (h, w) in tokens per frame, applied to the content and the segments.
      qk_corr: correlation of Wq and Wk (1 = pure self-similarity attention).
      locality: weight of the shared positional component (RoPE makes it local).
      temperature: global scale of query norms (sharpness); qnorm_sigma: log-normal spread.
      sink_keys: number of sink tokens (chosen at random among video tokens), sink_strength
        their extra key component (in units of sqrt(D)) along the query bias, whose weight
        is query_bias.
      noise: per-token i.i.d. noise added to q0/k0 before QK-norm.
      channel_gain_sigma: spread of log-normal per-channel QK-norm gains (0 = none).
    Returns (q, k, v, info); info holds grid, n_video, text_tokens, positions [n_video, 3],
    groups int64 [B, n_video], sink_idx int64 [B, sink_keys], softmax scale.
    """
    device = torch.device(device)
    t, h, w = grid
    n_video = t * h * w
    pos, panned, length, length_g = _pan_geometry(grid, pan, smooth, smooth_t, device)

    qs, ks, vs, groups, sinks = [], [], [], [], []
    for b in range(B):
        gen = torch.Generator().manual_seed(seed * 1000003 + b)
        ngen = _device_gen(device, seed * 1000003 + b + 7919)
        content, gid = _video_content(pos, panned, (h, w), D, n_groups, group_strength, (length, length_g), pan,
                                      gen, device)
        content, allpos = _with_text(content, pos, text_tokens, D, gen, ngen, device)
        q, k, v, mu = _project_heads(
            content, allpos, H, D, gen, ngen,
            qk_corr=qk_corr, locality=locality, qnorm_sigma=qnorm_sigma,
            temperature=temperature, query_bias=query_bias, noise=noise,
            channel_gain_sigma=channel_gain_sigma,
        )
        sidx = _add_sinks(k, mu, n_video, sink_keys, sink_strength, D, gen, device)
        qs.append(q), ks.append(k), vs.append(v), groups.append(gid), sinks.append(sidx)

    q = torch.stack(qs).to(dtype)
    k = torch.stack(ks).to(dtype)
    v = torch.stack(vs).to(dtype)
    info = {
        "grid": tuple(grid),
        "n_video": n_video,
        "text_tokens": text_tokens,
        "positions": pos,
        "groups": torch.stack(groups),
        "sink_idx": torch.stack(sinks),
        "scale": D ** -0.5,
    }
    return q, k, v, info


# ----------------------------------------------------------------------------- real video

def make_video_qkv(
    frames: torch.Tensor,
    patch: tuple[int, int, int] = (4, 16, 16),
    D: int = 128,
    heads: int = 2,
    seed: int = 0,
    *,
    hidden: int = 256,
    qk_corr: float = 0.8,
    locality: float = 0.8,
    temperature: float = 1.4,
    qnorm_sigma: float = 0.3,
    rope: bool = True,
    dtype: torch.dtype = torch.bfloat16,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Q/K/V [1, heads, N, D] from real video frames.

    frames: float [T, H, W, 3] in [0, 1] (any device). The clip is cropped to multiples of
    `patch` = (frames, pixels, pixels) per token (default 4×16×16, the footprint of one token
    of a Wan/Hunyuan latent after the 4×8×8 VAE and 1×2×2 patch embedding). Each patch is
    standardised, embedded by a fixed random two-layer projection (GELU, LayerNorm) to
    `hidden` channels, then projected per head like `make_structured_qkv` (correlated Wq/Wk,
    shared positional component, QK RMS-norm, 3D RoPE if `rope`, log-normal query norms).
    Returns (q, k, v, info) with info["grid"] = token grid (t, h, w).
    """
    if frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError("frames must be [T, H, W, 3]")
    dev = frames.device
    pt, ph, pw = patch
    T, Hh, Ww, _ = frames.shape
    gt, gh, gw = T // pt, Hh // ph, Ww // pw
    if min(gt, gh, gw) < 1:
        raise ValueError(f"clip {tuple(frames.shape)} smaller than one patch {patch}")
    x = frames[: gt * pt, : gh * ph, : gw * pw].float()
    x = x.reshape(gt, pt, gh, ph, gw, pw, 3).permute(0, 2, 4, 1, 3, 5, 6).reshape(gt * gh * gw, -1)
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-3)
    gen = torch.Generator().manual_seed(seed)
    ngen = _device_gen(dev, seed + 7919)
    P = x.shape[1]
    w1 = (torch.randn(P, hidden, generator=gen) / math.sqrt(P)).to(dev)
    w2 = (torch.randn(hidden, hidden, generator=gen) / math.sqrt(hidden)).to(dev)
    hdn = torch.nn.functional.gelu(x @ w1)
    hdn = torch.nn.functional.layer_norm(hdn @ w2 + x @ w1, (hidden,))
    pos = grid_positions((gt, gh, gw), dev)
    if not rope:
        pos = torch.zeros_like(pos)
    q, k, v, _ = _project_heads(
        hdn, pos, heads, D, gen, ngen,
        qk_corr=qk_corr, locality=locality if rope else 0.0, qnorm_sigma=qnorm_sigma,
        temperature=temperature, query_bias=0.0, noise=0.0,
    )
    info = {"grid": (gt, gh, gw), "n_video": gt * gh * gw, "text_tokens": 0,
            "positions": grid_positions((gt, gh, gw), dev), "scale": D ** -0.5, "patch": tuple(patch)}
    return q.unsqueeze(0).to(dtype), k.unsqueeze(0).to(dtype), v.unsqueeze(0).to(dtype), info


def procedural_video(T: int = 32, H: int = 128, W: int = 128, n_shapes: int = 6, seed: int = 0,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """A rendered stand-in for a real clip: textured discs and squares moving over a drifting
    gradient background. float32 [T, H, W, 3] in [0, 1]. Only for when no real clip is at hand."""
    gen = torch.Generator().manual_seed(seed)
    dev = torch.device(device)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, H, device=dev), torch.linspace(0, 1, W, device=dev), indexing="ij")
    c0, c1 = torch.rand(3, generator=gen).to(dev), torch.rand(3, generator=gen).to(dev)
    out = torch.empty(T, H, W, 3, device=dev)
    params = []
    for _ in range(n_shapes):
        params.append(dict(
            p=torch.rand(2, generator=gen).tolist(), vel=((torch.rand(2, generator=gen) - 0.5) * 0.03).tolist(),
            r=float(0.06 + 0.12 * torch.rand(1, generator=gen)), col=torch.rand(3, generator=gen).to(dev),
            freq=float(10 + 30 * torch.rand(1, generator=gen)), square=bool(torch.rand(1, generator=gen) < 0.5),
        ))
    for f in range(T):
        g = (xx + 0.2 * math.sin(0.1 * f)).clamp(0, 1)[..., None]
        img = c0 * (1 - g) + c1 * g
        for s in params:
            cy, cx = s["p"][0] + s["vel"][0] * f, s["p"][1] + s["vel"][1] * f
            dy, dx = yy - cy, xx - cx
            inside = (torch.maximum(dy.abs(), dx.abs()) < s["r"]) if s["square"] else (dy * dy + dx * dx < s["r"] ** 2)
            tex = 0.75 + 0.25 * torch.sin(s["freq"] * (dx + dy) * 2 * math.pi)[..., None]
            img = torch.where(inside[..., None], s["col"] * tex, img)
        out[f] = img
    return out.clamp(0, 1)


# ----------------------------------------------------------------------------- measurement

@torch.no_grad()
def attention_peakedness(
    q: torch.Tensor, k: torch.Tensor, *, n_queries: int = 256, frac: float = 0.15,
    scale: float | None = None, seed: int = 0, sink_idx: torch.Tensor | None = None,
) -> dict[str, float]:
    """How concentrated softmax(q·kᵀ·scale) is, on a random sample of queries (O(n_queries·N)).

    q, k: [B, H, N, D]. Returns mean over sampled (b, h, query) of:
      entropy_ratio: H(p) / log N (1 = uniform);
      top_mass: mass of the top `frac` of keys;
      keys_for_90: fraction of keys needed to hold 90 % of the mass;
      sink_mass: mass on the keys in sink_idx [B, S] (if given).
    """
    B, H, N, D = q.shape
    scale = D ** -0.5 if scale is None else scale
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, N, (min(n_queries, N),), generator=gen).to(q.device)
    s = torch.matmul(q[:, :, idx].float(), k.float().transpose(-1, -2)) * scale  # [B,H,S,N]
    p = torch.softmax(s, -1)
    ent = -(p * torch.log(p.clamp_min(1e-30))).sum(-1) / math.log(N)
    ps, _ = torch.sort(p, -1, descending=True)
    cum = ps.cumsum(-1)
    ntop = max(1, int(round(frac * N)))
    top = cum[..., ntop - 1]
    k90 = ((cum < 0.9).sum(-1) + 1).float() / N
    res = {"entropy_ratio": float(ent.mean()), "top_mass": float(top.mean()), "keys_for_90": float(k90.mean()),
           "n": N}
    if sink_idx is not None and sink_idx.numel():
        sm = torch.stack([p[b, :, :, sink_idx[b]].sum(-1) for b in range(B)])
        res["sink_mass"] = float(sm.mean())
    return res
