"""Model families and token layouts: which DiT a forward belongs to (Wan, HunyuanVideo 1.0/1.5,
CogVideoX, MiniMax-H3), where its video / text / in-context tokens sit, which attention call is which layer and
CFG branch, and attention masks as per-key masks; `AttentionCall`, one call as an attention
override receives it. Shared by the patcher and Capture; imports no adacluster_core."""
from __future__ import annotations

import dataclasses
import math
import sys
from collections import Counter
from typing import Any, Callable

import torch

from .core import MASK_THRESHOLD


# ------------------------------------------------------------------------------------------------
# per-forward context
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ForwardContext:
    run: Any                         # whose forward: the patcher's RunState (lane) or a Capture run
    family: str | None
    reason: str = ""                 # why this forward stays dense entirely ("" = may go sparse)
    grid: tuple[int, ...] = ()
    n_vid: int = 0
    n_txt: int = 0                   # joint text tokens (Hunyuan/CogVideoX) / Wan context length
    ctx_lens: tuple[int, ...] = ()   # Wan cross-attention key lengths
    n_extra: int = 0                 # in-context tokens after the video (upstream Wan context_latents)
    txt_first: bool = True
    n_layers: int = 0
    sigma: float = float("nan")
    step: int = -1
    n_steps: int | None = None       # sampler steps (from transformer_options["sample_sigmas"])
    phase: str = "sparse"            # warmup | calibration | sparse
    warm: bool = False               # inside the dense warmup (the last warmup step calibrates)
    cond_or_uncond: tuple[int, ...] = ()
    self_calls: int = 0              # per-forward self-attention counter (layer id fallback)
    calls: int = 0                   # all attention calls in this forward
    calls_per_block: int = 2         # Wan: self + cross (+ cross img)
    n_single: int = 0                # Hunyuan single-stream blocks (numbered after the double blocks)
    segments: tuple = ()             # H3: (kind, rows) of the packed sequence, video last
    mask_cache: Any = None           # (mask, key mask, reason) of the last mask seen (check_mask)

    def __deepcopy__(self, memo):
        return self


# ------------------------------------------------------------------------------------------------
# one attention call
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(slots=True)
class AttentionCall:
    """One call of ComfyUI's attention function as `wrap_attn` hands it to an attention override:
    override(func, q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
    skip_output_reshape=False, **kwargs), kwargs holding transformer_options, scale, ... (the
    signature of every attention function in ComfyUI 0.3.75 and upstream).

    ComfyUI 0.33+ may pass q, k, v as `AttentionTensorContainer`s to the override's
    `container_function` (no `func` then): `containers` holds them, q/k/v are peeked tensors, and
    `caller` (nodes/interop.py) is what `wrap_attn` had at hand (its `func`, the wrapper, the
    model's preferred attention)."""
    func: Callable | None
    previous: Callable | None        # the override installed before ours (chained), or None
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    heads: Any
    mask: Any = None
    attn_precision: Any = None
    skip_reshape: bool = False
    skip_output_reshape: bool = False
    kwargs: dict = dataclasses.field(default_factory=dict)
    containers: tuple | None = None  # (q, k, v) AttentionTensorContainers not yet consumed
    caller: Any = None               # interop.Caller, resolved on the first dense call

    def take(self) -> None:
        """Consume the containers (the sparse path owns q, k, v from here on)."""
        if self.containers is not None:
            self.q, self.k, self.v = (c.take() for c in self.containers)
            self.containers = None

    def dense(self):
        """The call, unchanged, through exactly what ComfyUI would have run without AdaCluster: the
        previous override (it chains on to `func`), else the model's preferred attention (ComfyUI
        after 0.33 drops it once any override is installed), else `func`. Containers still unconsumed
        are handed on (the previous override's / the attention function's `container_function`), so
        the callee can release q, k, v as early as upstream intends; this call keeps no reference."""
        from .interop import attention_caller, default_attention   # (no ComfyUI import)
        kw = dict(mask=self.mask, attn_precision=self.attn_precision, skip_reshape=self.skip_reshape,
                  skip_output_reshape=self.skip_output_reshape, **self.kwargs)
        if self.caller is None:
            self.caller = attention_caller()
        c = self.caller
        func = self.func if self.func is not None else (c.func or default_attention())
        if self.containers is not None:
            conts, self.containers = self.containers, None
            self.q = self.k = self.v = None
            args = (*conts, self.heads)
            prev_cf = getattr(self.previous, "container_function", None) if self.previous is not None else None
            if prev_cf is not None:
                return prev_cf(*args, **kw)
            if self.previous is None:
                target = c.preferred_function() or c.wrapper
                if target is not None:   # a wrap_attn wrapper: `_inside_attn_wrapper` is in kw, so it
                    return target(*args, **kw)   # runs its container_function or takes and runs func
            args = (*(t.take() for t in conts), self.heads)
        else:
            args = (self.q, self.k, self.v, self.heads)
        if self.previous is not None:
            return self.previous(func, *args, **kw)
        pref = c.preferred_function() if self.previous is None else None
        if pref is not None:
            return pref(*args, **kw)
        return func(*args, **kw)


# ------------------------------------------------------------------------------------------------
# model family / layout
# ------------------------------------------------------------------------------------------------
# DiT classes of ComfyUI (0.33) the pack does not handle, by class name -> the family the Stats node
# names ("dense: family ltxav not supported"); checked first: some subclass a supported model
UNSUPPORTED_FAMILIES = {
    "WanAnimate2Model": "wan-animate2",     # Wan-Animate2: pose branch + reference slot
    "LTXVModel": "ltxv",                    # LTX-Video / LTX-2 video
    "LTXAVModel": "ltxav",                  # LTX 2.x audio-video
    "Kandinsky5": "kandinsky5",             # Kandinsky 5 video / image
    "HunyuanVideo15SRModel": "hunyuan15-sr",   # HunyuanVideo 1.5 latent upsampler
}


def unsupported_family(dm) -> str | None:
    """The family label of a DiT the pack knows and does not support (UNSUPPORTED_FAMILIES), or None."""
    return UNSUPPORTED_FAMILIES.get(type(dm).__name__)


def detect_family(dm) -> tuple[str | None, str]:
    """(family, reason) from the DiT object: wan / hunyuan / hunyuan15 / cogvideox / h3, or (None, why)."""
    name = type(dm).__name__
    if unsupported_family(dm):
        return None, f"family {unsupported_family(dm)} not supported"
    if hasattr(dm, "video_patch_proj") and hasattr(dm, "audio_patch_proj") and hasattr(dm, "blocks"):
        return "h3", ""   # MiniMax-H3 (ComfyUI >= 0.33): one packed audio-video sequence per forward
    if hasattr(dm, "double_blocks") and hasattr(dm, "txt_in") and hasattr(dm, "single_blocks"):
        ps = list(getattr(dm, "patch_size", []) or [])
        if getattr(dm, "cond_type_embedding", None) is not None or ps == [1, 1, 1]:
            return "hunyuan15", ""
        if "Hunyuan" in name or hasattr(dm, "vector_in"):
            return "hunyuan", ""
        return None, f"unsupported-model ({name})"
    if "CogVideo" in name or (hasattr(dm, "patch_embed") and hasattr(dm, "patch_size_t") and hasattr(dm, "blocks")):
        return "cogvideox", ""
    if hasattr(dm, "blocks") and hasattr(dm, "text_embedding") and hasattr(dm, "patch_size"):
        if hasattr(dm, "vace_blocks"):
            return None, "unsupported-model (Wan VACE)"
        return "wan", ""
    return None, f"unsupported-model ({name})"


def _patch3(dm, family) -> tuple[int, ...]:
    if family == "cogvideox":
        p = int(getattr(dm, "patch_size", 2))
        pt = getattr(dm, "patch_size_t", None)
        return (int(pt) if pt else 1, p, p)
    return tuple(int(v) for v in getattr(dm, "patch_size", (1, 2, 2)))


def _arg(args, kwargs, i, name):
    if name in kwargs:
        return kwargs[name]
    return args[i] if len(args) > i else None


def _seq_len(t) -> int:
    return int(t.shape[1]) if isinstance(t, torch.Tensor) and t.ndim >= 2 else 0


def _shares_grid(tdc, x) -> bool:
    """A latent concatenated to `x` along time (Wan's time_dim_concat) with the same frame size."""
    return (isinstance(tdc, torch.Tensor) and tdc.ndim == x.ndim == 5 and tdc.shape[0] in (1, x.shape[0])
            and tuple(tdc.shape[3:]) == tuple(x.shape[3:]))


def _context_latent_tokens(latents, patch) -> int:
    """Tokens upstream Wan appends after the video for `context_latents` (in-context references):
    each latent [B, C, T, H, W] is padded to the patch size and patchified on its own grid."""
    if not isinstance(latents, (list, tuple)):
        return 0
    n = 0
    for lat in latents:
        if isinstance(lat, torch.Tensor) and lat.ndim >= 4:
            dims = list(lat.shape[-len(patch):])
            n += int(math.prod(int(math.ceil(d / p)) for d, p in zip(dims, patch)))
    return n


def build_forward_context(run, dm, args, kwargs, to: dict, clock=None) -> ForwardContext:
    """What the attention override needs to place tokens, computed once per forward (`run`: whose
    forward it is, kept as fc.run; `clock`: a StepClock that notes the sampler's schedule)."""
    family, why = detect_family(dm)
    fc = ForwardContext(run=run, family=family, reason=why)
    x = args[0] if args else kwargs.get("x")
    if family == "h3":
        x = _h3_video_latent(x)
    if family is None or not isinstance(x, torch.Tensor) or x.ndim < 4:
        if family is not None:
            fc.reason = "unsupported-input"
        return fc
    patch = _patch3(dm, family)
    spatial = list(x.shape[2:])
    patch = patch[-len(spatial):]
    fc.grid = tuple(int(math.ceil(s / p)) for s, p in zip(spatial, patch))
    fc.n_vid = int(math.prod(fc.grid))
    if family == "wan":
        _wan_layout(fc, dm, x, patch, args, kwargs)
    elif family in ("hunyuan", "hunyuan15"):
        _hunyuan_layout(fc, dm, args, kwargs)
    elif family == "cogvideox":
        context = _arg(args, kwargs, 2, "context")
        fc.n_txt = _seq_len(context)
        fc.txt_first = True
        fc.n_layers = len(getattr(dm, "blocks", []))
    elif family == "h3":
        _h3_layout(fc, dm, x, args, kwargs)
    cou = to.get("cond_or_uncond")
    fc.cond_or_uncond = tuple(int(c) for c in cou) if cou else ()
    ss = to.get("sample_sigmas")
    if isinstance(ss, torch.Tensor) and ss.ndim == 1 and ss.numel() > 1:
        fc.n_steps = int(ss.numel()) - 1
        if clock is not None:
            clock.note_schedule(ss)
    sig = to.get("sigmas")
    if isinstance(sig, torch.Tensor) and sig.numel():
        fc.sigma = float(sig.detach().float().max())
    elif sig is not None:
        try:
            fc.sigma = float(sig)
        except (TypeError, ValueError):
            pass
    return fc


def _wan_layout(fc: ForwardContext, dm, x, patch, args, kwargs) -> None:
    """Wan: context / CLIP key lengths, blocks, Phantom-style frames in time, in-context latents."""
    context = _arg(args, kwargs, 2, "context")
    clip_fea = _arg(args, kwargs, 3, "clip_fea")
    tdc = _arg(args, kwargs, 4, "time_dim_concat")
    n_ctx = _seq_len(context)
    lens = [n_ctx]
    if clip_fea is not None and getattr(dm, "img_emb", None) is not None:
        lens += [n_ctx + _seq_len(clip_fea), _seq_len(clip_fea)]
    fc.ctx_lens = tuple(lens)
    fc.n_txt = n_ctx
    blocks = getattr(dm, "blocks", [])
    fc.n_layers = len(blocks)
    try:
        ca = type(blocks[0].cross_attn).__name__ if len(blocks) else ""
    except Exception:
        ca = ""
    fc.calls_per_block = 3 if ("I2V" in ca and clip_fea is not None) else 2
    if _shares_grid(tdc, x):
        # Phantom-style subject frames concatenated in time: Wan appends them to the latent
        # before patchifying, so they are more frames of the same (t, h, w) raster grid
        fc.grid = (fc.grid[0] + int(math.ceil(tdc.shape[2] / patch[0])),) + fc.grid[1:]
        fc.n_vid = int(math.prod(fc.grid))
    elif tdc is not None or "reference_latent" in kwargs:
        fc.reason = "extra-tokens (reference / concatenated latents)"
    fc.n_extra = _context_latent_tokens(kwargs.get("context_latents"), patch)


def _hunyuan_layout(fc: ForwardContext, dm, args, kwargs) -> None:
    """HunyuanVideo 1.0 / 1.5: joint text tokens (text, byT5, vision), double + single blocks, order."""
    context = _arg(args, kwargs, 2, "context")
    txt_byt5 = _arg(args, kwargs, 4, "txt_byt5")
    clip_fea = _arg(args, kwargs, 5, "clip_fea")
    ref_latent = _arg(args, kwargs, 9, "ref_latent")
    n_txt = _seq_len(context)
    if txt_byt5 is not None and getattr(dm, "byt5_in", None) is not None:
        n_txt += _seq_len(txt_byt5)
    if clip_fea is not None and getattr(dm, "vision_in", None) is not None:
        n_txt += _seq_len(clip_fea)
    fc.n_txt = n_txt
    fc.n_single = len(dm.single_blocks)
    fc.n_layers = len(dm.double_blocks) + fc.n_single
    # ComfyUI < 0.14 concatenates [img, txt] (DoubleStreamBlock(flipped_img_txt=True)); >= 0.14 [txt, img]
    fc.txt_first = not bool(getattr(dm.double_blocks[0], "flipped_img_txt", False)) if len(dm.double_blocks) else True
    if ref_latent is not None:
        fc.reason = "extra-tokens (reference latent)"


def _h3_video_latent(x):
    """The video latent [B, C, T, H, W] of H3's [video, audio] input (a list, or a NestedTensor)."""
    parts = getattr(x, "tensors", x)
    if isinstance(parts, (list, tuple)) and parts and isinstance(parts[0], torch.Tensor):
        return parts[0]
    return None


def _h3_packed_layout(dm, payload: dict, text_len: int, grid_shape: tuple, audio_t: int):
    """The model's own packed layout for this forward: the one extra_conds built (when its signature
    matches) or a new one from the model module's PackedLayout; None when neither can be had."""
    lay = payload.get("layout")
    sig = (text_len,) + tuple(grid_shape) + (audio_t,)
    if lay is not None and getattr(lay, "signature", None) == sig:
        return lay
    cls = getattr(sys.modules.get(type(dm).__module__), "PackedLayout", None)
    if cls is None:
        return None
    try:
        return cls(text_len, *grid_shape, audio_t, keyframes=payload.get("keyframes"), refs=payload.get("refs"))
    except Exception:
        return None


def _h3_layout(fc: ForwardContext, dm, video, args, kwargs) -> None:
    """MiniMax-H3 packs one sequence per forward, [text | cond or reference rows | audio | video],
    the target video last on the (t, h/2, w/2) grid. Everything before the video is one always-dense
    prefix (fc.n_txt, text-first); the layout is read from the model's own PackedLayout."""
    fc.n_layers = len(getattr(dm, "blocks", []))
    fc.calls_per_block = 1
    fc.txt_first = True
    x = args[0] if args else kwargs.get("x")
    parts = getattr(x, "tensors", x)
    audio = parts[1] if isinstance(parts, (list, tuple)) and len(parts) > 1 else None
    context = _arg(args, kwargs, 2, "context")
    payload = kwargs.get("minimax_payload") or {}
    if not isinstance(audio, torch.Tensor) or not isinstance(context, torch.Tensor) or not isinstance(payload, dict):
        fc.reason = "unsupported-input"
        return
    padded = (video.shape[2],) + tuple(2 * g for g in fc.grid[1:])   # (latent_t, lat_h, lat_w) after padding
    lay = _h3_packed_layout(dm, payload, int(context.shape[1]), padded, int(audio.shape[-1]))
    segs = tuple((str(kind), int(b) - int(a)) for a, b, kind in getattr(lay, "segments", ()) or ())
    if not segs or segs[-1] != ("video", fc.n_vid):
        fc.reason = "unsupported-input (h3 layout)"
        return
    fc.segments = segs
    fc.n_txt = sum(n for _, n in segs[:-1])


def h3_description(segments, grid) -> str:
    """`H3 t2va: text 512, audio 414, video 32x24x42` (fl2va with keyframe rows, ref2va with references)."""
    sums: dict = {}
    for kind, n in segments:
        sums[kind] = sums.get(kind, 0) + n
    task = "ref2va" if any(k.startswith("ref_") for k in sums) else ("fl2va" if any(
        k.startswith("cond") for k in sums) else "t2va")
    parts = [f"{k.replace('_', ' ')} {n}" for k, n in sums.items() if k != "video"]
    return f"H3 {task}: " + ", ".join(parts + ["video " + "x".join(str(g) for g in grid)])


def branch_keys(cond_or_uncond: tuple[int, ...]) -> list[str]:
    seen: Counter = Counter()
    out = []
    for c in cond_or_uncond:
        tag = "c" if c == 0 else ("u" if c == 1 else f"x{c}_")
        out.append(f"{tag}{seen[c]}")
        seen[c] += 1
    return out


def mask_to_keys(mask: torch.Tensor, B: int, L: int):
    """Additive key mask [B or 1, 1, L] from ComfyUI's mask, or None when it is not a pure
    key-padding mask (e.g. a per-query [.., L, L] mask)."""
    if mask.shape[-1] != L or mask.numel() % L:
        return None
    if mask.ndim >= 2 and mask.shape[-2] != 1:
        return None
    rows = mask.numel() // L
    if rows not in (1, B):
        return None
    m = mask.reshape(rows, 1, L)
    if m.dtype == torch.bool:
        m = torch.zeros(m.shape, dtype=torch.float32, device=m.device).masked_fill(~m, float("-inf"))
    return m


def check_mask(run, fc: ForwardContext, mask, B: int, L: int, txt_range, vid_start: int):
    """(key mask [B or 1, 1, L] for the core or None, reason): the reason is "" unless the mask cannot
    be honoured (only padding masks on text keys can). Cached per forward; notes the masked keys in
    the run's layout entry."""
    if mask is None:
        return None, ""
    if fc.mask_cache is not None and fc.mask_cache[0] is mask:
        return fc.mask_cache[1], fc.mask_cache[2]
    km = mask_to_keys(mask, B, L)
    reason = ""
    if km is None:
        reason = "mask-shape"
    else:
        neg = (km.reshape(-1, L) <= MASK_THRESHOLD).any(0)          # one host sync per forward
        idx = torch.nonzero(neg).flatten().tolist()
        n_vid = fc.n_vid
        in_vid = [i for i in idx if vid_start <= i < vid_start + n_vid]
        in_txt = [i for i in idx if txt_range is not None and txt_range[0] <= i < txt_range[1]]
        lay = run.layouts.get((fc.family, fc.grid, fc.n_txt, fc.txt_first))
        if lay is not None:
            lay["masked_keys"] = len(idx)
            lay["masked_keys_in_text"] = len(in_txt)
        if in_vid:
            reason = "mask-on-video-keys"
            km = None
    fc.mask_cache = (mask, km, reason)
    return km, reason


def classify_call(fc: ForwardContext, q, k, heads, skip_reshape: bool):
    """Returns (kind, reason, layout) for one attention call.

    kind: "self" (may go sparse), "dense" (run dense, `reason` says why, still a counted layer when
    it is a self-attention of a block), "other" (cross-attention / text refiner: dense, not a layer).
    layout: (B, H, L, D, vid_start, txt_range or None).
    """
    if skip_reshape:
        if q.ndim != 4:
            return "other", "layout", None
        B, H, L, D = q.shape
        Lk = k.shape[2]
    else:
        if q.ndim != 3 or not heads:
            return "other", "layout", None
        B, L, HD = q.shape
        H = int(heads)
        D = HD // H
        Lk = k.shape[1]
    if L != Lk:
        return "other", "cross-attn", None
    fam = fc.family
    n_vid = fc.n_vid
    if fam == "wan":
        n_all = n_vid + fc.n_extra
        if L in fc.ctx_lens and L == n_all:
            return "dense", "ambiguous-self-or-cross", None
        if L != n_all:
            if L in fc.ctx_lens:
                return "other", "cross-attn", None
            return "dense", "token-count-mismatch", None
        # in-context reference tokens (context_latents) follow the video: an always-dense range
        return "self", "", (B, H, L, D, 0, (n_vid, n_all) if fc.n_extra else None)
    if fam in ("hunyuan", "hunyuan15", "cogvideox", "h3"):
        n_txt = fc.n_txt
        if L != n_vid + n_txt:
            if L <= n_txt:
                return "other", "text-only (refiner)", None
            return "dense", "token-count-mismatch", None
        if fc.txt_first:
            return "self", "", (B, H, L, D, n_txt, (0, n_txt) if n_txt else None)
        return "self", "", (B, H, L, D, 0, (n_vid, n_vid + n_txt) if n_txt else None)
    return "other", "unsupported-model", None


def layer_index(fc: ForwardContext, to: dict) -> int:
    """Global layer id: ComfyUI's block_index when it exists (Hunyuan all versions: double blocks
    first, then single blocks; Wan from 0.5), else the per-forward self-attention counter."""
    bi = to.get("block_index")
    if isinstance(bi, int) and not isinstance(bi, bool):
        if fc.family in ("hunyuan", "hunyuan15"):
            if to.get("block_type") == "single":
                return fc.n_layers - fc.n_single + bi
            return bi
        if fc.family == "wan":
            return bi
    return fc.self_calls


