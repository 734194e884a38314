"""AdaCluster Capture: MODEL -> MODEL that writes the Q/K/V of chosen self-attention layers and
steps to a .safetensors file under ComfyUI's output folder (input of `python -m adacluster_core.tune`).

Off by default (`enabled` = false). Chains any attention override already on the model: place it
AFTER AdaCluster Sparse Attention (or on an unpatched model); it captures the inputs of each video
self-attention call, then hands the call on unchanged. The file is written when the run ends
(ON_CLEANUP); its size is bounded by `max_mb` (calls that would exceed it are skipped, and said so).

File format ("adacluster-capture/1"):
  tensors  "L{layer}.S{step}.q" / ".k" / ".v": [heads_kept, N, D] (batch element 0 of the first
           cond chunk, original dtype, contiguous), optional "L{layer}.S{step}.key_mask": [N] float32
           additive key mask (<= -1e4 = masked) when the model passed a key-padding mask.
  metadata (all strings; JSON where structured): format, family, model, grid, n_vid, n_txt,
           txt_first, text_range (JSON [start, stop] or null), n_layers, heads_total, head_dim,
           dtype, heads (JSON list of kept head indices), calls (JSON list of {"key", "layer",
           "step", "sigma", "n_tokens"}), n_steps, config (JSON AdaClusterConfig dict of the
           AdaCluster patch on the model, or null), skipped (calls dropped by max_mb),
           complete ("true" when the sampler finished; "false" for a run that was interrupted
           or failed: the tuner refuses such a capture unless --allow-incomplete).
A write failure after a finished run raises (the prompt fails with the message); after a run
that already failed it is logged (the run's own error stays the one reported).
"""
from __future__ import annotations

import json
import logging
import os
import re

import torch
from comfy_api.latest import io

from . import families, hook, patcher
from .io_types import CATEGORY
from .layer_rules import parse_selection
from .step_clock import StepClock

log = logging.getLogger("AdaCluster")

CAPTURE_KEY = "adacluster_capture"
CAPTURE_FWD_KEY = "adacluster_capture_fwd"
CAPTURE_FORMAT = "adacluster-capture/1"
MAX_HEADS = 256            # widget and CaptureRun bounds (a graph is untrusted input)
MAX_MB = 65536.0           # the buffers are held in RAM until the run ends
MAX_PREFIX_CHARS = 200
_SUFFIX = "_00000.safetensors"


def check_prefix(prefix: str) -> str:
    """ValueError naming filename_prefix when it cannot make a file name (lexical, no file access)."""
    if not isinstance(prefix, str):
        raise ValueError(f"filename_prefix: expected text, got a {type(prefix).__name__}")
    p = prefix
    if len(p) > MAX_PREFIX_CHARS:
        raise ValueError(f"filename_prefix: longer than {MAX_PREFIX_CHARS} characters ({len(p)})")
    if "\x00" in p:
        raise ValueError("filename_prefix: contains a NUL character")
    for part in p.replace("\\", "/").split("/"):
        if len(part.encode("utf-8")) + len(_SUFFIX) > 255:
            raise ValueError("filename_prefix: a path component is too long for a file name")
    return p


def _dtype_bytes(dt: torch.dtype) -> int:
    return torch.empty((), dtype=dt).element_size()


def expected_bytes(n_layers: int, n_steps: int, heads: int, tokens: int, head_dim: int, dtype_bytes: int) -> int:
    """Size of the tensors of a capture: 3 (q, k, v) x layers x steps x heads x tokens x head_dim x bytes."""
    return 3 * n_layers * n_steps * heads * tokens * head_dim * dtype_bytes


def _kept_heads(H: int, max_heads: int) -> list[int]:
    if max_heads <= 0 or max_heads >= H:
        return list(range(H))
    # evenly spaced over the heads (heads differ more across the range than neighbours do)
    return sorted({round(i * (H - 1) / max(1, max_heads - 1)) for i in range(max_heads)})[:max_heads]


class CaptureRun:
    """Per captured model: selection, buffers of the current run, and the writer."""

    def __init__(self, layers: str, steps: str, max_heads: int, max_mb: float, prefix: str, out_dir: str,
                 config=None):
        self.layers = parse_selection(layers, "layers")
        self.steps = parse_selection(steps, "steps")
        if isinstance(max_heads, bool) or not isinstance(max_heads, int) or not 0 <= max_heads <= MAX_HEADS:
            raise ValueError(f"max_heads must be an int in [0, {MAX_HEADS}], got {max_heads!r}")
        mb = float(max_mb)
        if not (0.0 < mb <= MAX_MB):   # also rejects NaN
            raise ValueError(f"max_mb must be in (0, {MAX_MB:g}], got {max_mb!r}")
        self.max_heads = int(max_heads)
        self.max_bytes = int(mb * 2**20)
        self.prefix = check_prefix(prefix)
        self.out_dir = out_dir
        self.config = config
        self._warned: set = set()
        self.last_path: str | None = None
        self.last_info: str = ""
        self.reset()

    def __deepcopy__(self, memo):
        return self

    def reset(self):
        self.clock = StepClock()   # step numbering of this run
        self.tensors: dict[str, torch.Tensor] = {}
        self.calls: list[dict] = []
        self.meta: dict = {}
        self.bytes = 0
        self.skipped = 0
        self.completed = False     # set when the sampler returns (SAMPLER_SAMPLE wrapper)

    def warn_once(self, key, msg, *a):
        if key not in self._warned:
            self._warned.add(key)
            log.warning(msg, *a)

    def want(self, layer: int, fc) -> bool:
        return (fc.step >= 0 and self.layers.matches(layer, fc.n_layers or None)
                and self.steps.matches(fc.step, fc.n_steps))

    def add(self, fc, layer, layout, q, k, v, mask, skip_reshape):
        B, H, L, D, _vid_start, txt_range = layout
        key = f"L{layer}.S{fc.step}"
        if key + ".q" in self.tensors:
            return
        # batch element 0 of the first cond chunk (ComfyUI may batch [uncond, cond])
        b0 = 0
        cou = fc.cond_or_uncond
        if cou and B % len(cou) == 0 and 0 in cou:
            b0 = cou.index(0) * (B // len(cou))
        if skip_reshape:
            Q, K, V = q[b0], k[b0], v[b0]
        else:
            Q, K, V = (t[b0].view(L, H, D).transpose(0, 1) for t in (q, k, v))
        heads = _kept_heads(H, self.max_heads)
        idx = torch.tensor(heads, device=Q.device)
        n = 3 * len(heads) * L * D * _dtype_bytes(q.dtype)
        if self.bytes + n > self.max_bytes:
            self.skipped += 1
            return
        for name, t in (("q", Q), ("k", K), ("v", V)):
            self.tensors[f"{key}.{name}"] = t.index_select(0, idx).detach().to("cpu").contiguous()
        if mask is not None:
            km = families.mask_to_keys(mask, B, L)
            if km is not None:
                self.tensors[f"{key}.key_mask"] = km[b0 if km.shape[0] > 1 else 0, 0].detach().float().cpu().contiguous()
        self.bytes += n
        self.calls.append({"key": key, "layer": layer, "step": fc.step, "sigma": fc.sigma, "n_tokens": L})
        if not self.meta:
            self.meta = {"family": fc.family, "grid": list(fc.grid), "n_vid": fc.n_vid, "n_txt": fc.n_txt,
                         "txt_first": fc.txt_first, "text_range": list(txt_range) if txt_range else None,
                         "n_layers": fc.n_layers, "heads_total": H, "head_dim": D,
                         "dtype": str(q.dtype).replace("torch.", ""), "heads": heads}
        if fc.n_steps:
            self.meta["n_steps"] = fc.n_steps

    def target(self) -> tuple[str, str]:
        """(folder, base name) of the capture file, created inside the output folder (never outside)."""
        out = os.path.realpath(self.out_dir)
        os.makedirs(out, exist_ok=True)
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.basename(self.prefix)) or "capture"
        sub = os.path.dirname(self.prefix).strip("/\\")
        folder = os.path.realpath(os.path.join(out, sub))
        if os.path.commonpath([folder, out]) != out:
            folder = out
        os.makedirs(folder, exist_ok=True)
        return folder, base

    def write(self, model_name: str = "") -> str | None:
        if not self.tensors:
            self.last_info = "AdaCluster Capture: nothing captured (no matching video self-attention call)"
            log.warning(self.last_info)
            return None
        from safetensors.torch import save_file
        folder, base = self.target()
        i = 1
        while os.path.exists(os.path.join(folder, f"{base}_{i:05d}.safetensors")):
            i += 1
        path = os.path.join(folder, f"{base}_{i:05d}.safetensors")
        meta = {"format": CAPTURE_FORMAT, "model": model_name, "calls": json.dumps(self.calls),
                "config": json.dumps(self.config.to_dict() if self.config is not None else None),
                "skipped": str(self.skipped), "complete": "true" if self.completed else "false"}
        for k2, v2 in self.meta.items():
            meta[k2] = v2 if isinstance(v2, str) else json.dumps(v2)
        save_file(self.tensors, path, metadata=meta)
        self.last_path = path
        self.last_info = (f"AdaCluster Capture: wrote {len(self.calls)} calls, {self.bytes / 2**20:.2f} MiB to {path}"
                          + (f" ({self.skipped} calls skipped: max_mb reached)" if self.skipped else "")
                          + ("" if self.completed else " (INCOMPLETE: the run did not finish)"))
        log.info(self.last_info)
        return path


def make_capture_override(cap: CaptureRun, previous=None):
    """Records the inputs of the chosen video self-attention calls, then hands every call on
    unchanged to `previous` (or ComfyUI's `func`); same signature as the AdaCluster override
    (hook.attention_override; no container_function: 0.33's containers reach it taken)."""

    def handle(call: families.AttentionCall, kwargs: dict):
        to = kwargs.get("transformer_options") or {}
        fc = to.get(CAPTURE_FWD_KEY)
        if fc is not None and fc.run is cap and fc.family is not None and not fc.reason:
            try:
                _capture_call(cap, fc, to, call)
            except Exception as e:  # capturing must never break sampling
                cap.warn_once(("capture", type(e).__name__), "AdaCluster Capture failed on a call (%s: %s)",
                              type(e).__name__, e)
        return call.dense()

    return hook.attention_override(handle, previous, name="adacluster_capture_override", module=__name__,
                                   containers=False)


def _capture_call(cap: CaptureRun, fc, to: dict, call: families.AttentionCall) -> None:
    skip_reshape = bool(call.skip_reshape)
    kind, _reason, layout = families.classify_call(fc, call.q, call.k, call.heads, skip_reshape)
    if kind != "other":
        layer = families.layer_index(fc, to)
        fc.self_calls += 1
        if kind == "self" and cap.want(layer, fc):
            cap.add(fc, layer, layout, call.q, call.k, call.v, call.mask, skip_reshape)


def _begin_forward(cap: CaptureRun, dm, args, kwargs):
    to = hook.forward_options(args, kwargs)
    if to is None:
        return
    fc = families.build_forward_context(cap, dm, args, kwargs, to, clock=cap.clock)
    if fc.family is not None and fc.sigma == fc.sigma:
        fc.step = cap.clock.step_of(fc.sigma)
    to[CAPTURE_FWD_KEY] = fc


def capture_model(model, layers="*", steps="*", max_heads=4, max_mb=256.0, prefix="adacluster/capture",
                  out_dir: str | None = None):
    """Clone `model` with the capture override (chained on the current override) + callbacks."""
    if out_dir is None:
        import folder_paths
        out_dir = folder_paths.get_output_directory()
    m = model.clone()
    ada = patcher.get_run(m)
    cfg = ada.user_config if ada is not None else None
    cap = CaptureRun(layers, steps, max_heads, max_mb, prefix, out_dir, config=cfg)
    name = ""
    try:
        name = type(m.model.diffusion_model).__name__
    except Exception:
        pass

    def sampler_wrapper(executor, *args, **kwargs):
        out = executor(*args, **kwargs)
        cap.completed = True       # reached only when the sampler returns (not on interrupt / error)
        return out

    def on_pre_run(patcher_):
        cap.reset()

    def on_cleanup(patcher_):
        completed = cap.completed
        try:
            cap.write(name)
        except Exception as e:
            msg = f"AdaCluster Capture: could not write the capture file ({type(e).__name__}: {e})"
            if completed:   # a finished run: fail the prompt with the message
                raise RuntimeError(msg) from None
            log.exception(msg)   # the run already failed: keep its own error the reported one
        finally:
            cap.reset()

    hook.install_override(m, CAPTURE_KEY, lambda prev: make_capture_override(cap, prev), state_key=CAPTURE_KEY,
                          state=cap, diffusion_model=hook.forward_wrapper(lambda dm, a, kw: _begin_forward(cap, dm, a, kw)),
                          sampler_sample=sampler_wrapper, on_pre_run=on_pre_run, on_cleanup=on_cleanup)
    return m, cap


def size_info(model, layers: str, steps: str, max_heads: int, max_mb: float) -> str:
    """Expected size text: per 1,000 tokens per captured (layer, step), from the model's dims."""
    H = D = n_layers = None
    bytes_ = 2
    try:
        dm = model.model.diffusion_model
        blocks = getattr(dm, "blocks", None) or list(getattr(dm, "double_blocks", [])) + list(getattr(dm, "single_blocks", []))
        n_layers = len(blocks)
        H = int(getattr(dm, "num_heads", 0) or getattr(dm, "heads_num", 0) or 0) or None
        dim = int(getattr(dm, "dim", 0) or getattr(dm, "hidden_size", 0) or 0)
        D = dim // H if (H and dim) else None
        bytes_ = _dtype_bytes(model.model.get_dtype())
    except Exception:
        pass
    sel_l = parse_selection(layers, "layers")
    nl = sum(1 for i in range(n_layers) if sel_l.matches(i, n_layers)) if n_layers else None
    hk = min(max_heads, H) if (H and max_heads > 0) else H
    if hk and D:
        per = expected_bytes(1, 1, hk, 1000, D, bytes_)
        txt = (f"expected size: {per / 2**20:.2f} MiB per 1,000 tokens per captured layer x step "
               f"({hk} heads x {D} dims x q/k/v x {bytes_} B)")
        if nl:
            txt += f"; {nl} layers selected -> {nl * per / 2**20:.2f} MiB per 1,000 tokens per step"
    else:
        txt = "expected size: 3 x heads_kept x tokens x head_dim x bytes per captured layer x step"
    return txt + f"; capped at {max_mb:g} MiB (later calls are skipped). Written to the output folder when the run ends."


class AdaClusterCapture(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AdaClusterCapture",
            display_name="AdaCluster Capture",
            category=CATEGORY,
            description="Writes the Q/K/V of chosen video self-attention layers and steps (with token grid, text "
                        "range, model family, sigma) to output/<prefix>_NNNNN.safetensors when the run ends, for "
                        "`python -m adacluster_core.tune`. Place it after AdaCluster Sparse Attention (or on an "
                        "unpatched model). Off by default; the file size is capped by max_mb.",
            inputs=[
                io.Model.Input("model"),
                io.Boolean.Input("enabled", default=False,
                                 tooltip="Off (default): the model passes through unchanged, nothing is written."),
                io.String.Input("layers", default="*", tooltip="Layers to capture: '*', '0-3, -1' (rule grammar)."),
                io.String.Input("steps", default="*", tooltip="Sampling steps to capture (0 = first): '*', '2-', '0, -1'."),
                io.Int.Input("max_heads", default=4, min=0, max=MAX_HEADS,
                             tooltip="Keep at most this many heads per call (evenly spaced); 0 = all. "
                                     "Size = 3 x heads x tokens x head_dim x 2 bytes (bf16) per layer x step: "
                                     "Wan 14B at 75,600 tokens, 4 heads, bf16: 221 MiB per layer x step."),
                io.Float.Input("max_mb", default=256.0, min=0.01, max=MAX_MB, step=1.0,
                               tooltip="File size cap in MiB: calls that would exceed it are skipped."),
                io.String.Input("filename_prefix", default="adacluster/capture",
                                tooltip="Relative to ComfyUI's output folder (at most 200 characters); "
                                        "_00001.safetensors is appended."),
            ],
            outputs=[io.Model.Output(), io.String.Output(display_name="info")],
        )

    @classmethod
    def validate_inputs(cls, layers="*", steps="*", filename_prefix="adacluster/capture"):
        # only the strings: ComfyUI range-checks max_heads / max_mb itself (it would skip them if
        # they were named here or caught by **kwargs); the message names the widget
        try:
            parse_selection(layers or "*", "layers")
            parse_selection(steps or "*", "steps")
            check_prefix(filename_prefix if filename_prefix is not None else "")
        except ValueError as e:
            return f"AdaCluster Capture: {e}"
        return True

    @classmethod
    def execute(cls, model, enabled=False, layers="*", steps="*", max_heads=4, max_mb=256.0,
                filename_prefix="adacluster/capture") -> io.NodeOutput:
        try:   # a linked value is not validated by ComfyUI: check the texts first, naming the widget
            parse_selection(layers, "layers")
            parse_selection(steps, "steps")
            check_prefix(filename_prefix)
            info = size_info(model, layers, steps, max_heads, max_mb)
        except ValueError as e:
            raise ValueError(f"AdaCluster Capture: {e}") from None
        if not enabled:
            return io.NodeOutput(model, "AdaCluster Capture: disabled (" + info + ")")
        try:
            m, cap = capture_model(model, layers, steps, max_heads, max_mb, filename_prefix)
        except ValueError as e:
            raise ValueError(f"AdaCluster Capture: {e}") from None
        try:   # fail now, not after sampling, when the output folder cannot be written
            folder, _base = cap.target()
            if not os.access(folder, os.W_OK):
                raise OSError("not writable")
        except OSError as e:
            raise ValueError(f"AdaCluster Capture: filename_prefix: cannot create the output folder ({e})") from None
        return io.NodeOutput(m, info, ui={"text": [info]})
