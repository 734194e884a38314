"""TEST-ONLY ComfyUI node pack (never shipped with AdaCluster).

The tests have no text encoder weights, so conditioning comes from
`AdaClusterTestZeroConditioning`; results are written to disk by `AdaClusterTestSaveLatent`
so the test process can inspect the sampled latent. V1 node API (NODE_CLASS_MAPPINGS).
"""
import hashlib
import os
import re

import torch


class AdaClusterTestZeroConditioning:
    """CONDITIONING of zeros [1, tokens, width] (+ pooled_output, optional attention_mask)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "tokens": ("INT", {"default": 16, "min": 1, "max": 4096}),
                "width": ("INT", {"default": 4096, "min": 1, "max": 16384}),
                "pooled_width": ("INT", {"default": 0, "min": 0, "max": 16384,
                                         "tooltip": "0: pooled_output None (Wan); 768 for HunyuanVideo 1.0"}),
            },
            "optional": {
                "mask_pad": ("INT", {"default": 0, "min": 0, "max": 4096,
                                     "tooltip": "adds attention_mask with this many padded (0) tokens at the end"}),
                "value": ("FLOAT", {"default": 0.0, "min": -10.0, "max": 10.0, "step": 0.01,
                                    "tooltip": "fill value (0 = zeros)"}),
            },
        }

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "adacluster_test"

    def make(self, tokens, width, pooled_width, mask_pad=0, value=0.0):
        extra = {}
        if mask_pad > 0:
            m = torch.ones(1, tokens, dtype=torch.long)
            m[:, max(0, tokens - mask_pad):] = 0
            extra["attention_mask"] = m
        # HunyuanVideo's encode_adm reads kwargs["pooled_output"] unconditionally: always set the key.
        extra["pooled_output"] = torch.zeros(1, pooled_width) if pooled_width > 0 else None
        return ([[torch.full((1, tokens, width), float(value)), extra]],)


def _safe_name(name):
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "latent"


class AdaClusterTestSaveLatent:
    """Output node: torch.save(latent, $ADACLUSTER_TEST_OUT/<name>.pt); ui text = shape + checksum."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "name": ("STRING", {"default": "latent"})}}

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "adacluster_test"

    def save(self, samples, name):
        s = samples["samples"]
        if getattr(s, "is_nested", False) and hasattr(s, "tensors"):   # MiniMax-H3: [video, audio]
            s = torch.cat([t.detach().to("cpu", torch.float32).reshape(-1) for t in s.tensors])
        s = s.detach().to("cpu", torch.float32).contiguous()
        out = os.environ.get("ADACLUSTER_TEST_OUT")
        path = ""
        if out:
            os.makedirs(out, exist_ok=True)
            path = os.path.join(out, _safe_name(name) + ".pt")
            torch.save(s, path)
        digest = hashlib.sha256(s.numpy().tobytes()).hexdigest()[:16]
        text = (f"name={name} shape={list(s.shape)} finite={bool(torch.isfinite(s).all())} "
                f"sha256={digest} path={path}")
        return {"ui": {"text": [text], "shape": list(s.shape), "sha256": [digest], "path": [path]}}


NODE_CLASS_MAPPINGS = {
    "AdaClusterTestZeroConditioning": AdaClusterTestZeroConditioning,
    "AdaClusterTestSaveLatent": AdaClusterTestSaveLatent,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "AdaClusterTestZeroConditioning": "AdaCluster TEST: zero conditioning",
    "AdaClusterTestSaveLatent": "AdaCluster TEST: save latent",
}


class AdaClusterTestCountingOverride:
    """MODEL -> MODEL with an optimized_attention_override that counts the calls reaching it and
    chains any override already installed. At the end of each run (ON_CLEANUP) it writes
    $ADACLUSTER_TEST_OUT/counter_<name>.json = {"calls": n, "chained": bool}."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "name": ("STRING", {"default": "counter"})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "adacluster_test"

    def patch(self, model, name):
        import json

        import comfy.patcher_extension as pe

        m = model.clone()
        to = m.model_options.setdefault("transformer_options", {})
        prev = to.get("optimized_attention_override")
        counter = {"calls": 0}

        def counting_override(func, *args, **kwargs):
            counter["calls"] += 1
            if prev is not None:
                return prev(func, *args, **kwargs)
            return func(*args, **kwargs)

        to["optimized_attention_override"] = counting_override

        def on_pre_run(patcher):
            counter["calls"] = 0

        def on_cleanup(patcher):
            out = os.environ.get("ADACLUSTER_TEST_OUT")
            if out:
                os.makedirs(out, exist_ok=True)
                with open(os.path.join(out, f"counter_{_safe_name(name)}.json"), "w") as f:
                    json.dump({"calls": counter["calls"], "chained": prev is not None}, f)

        m.add_callback_with_key(pe.CallbacksMP.ON_PRE_RUN, "adacluster_test_counter", on_pre_run)
        m.add_callback_with_key(pe.CallbacksMP.ON_CLEANUP, "adacluster_test_counter", on_cleanup)
        return (m,)


NODE_CLASS_MAPPINGS["AdaClusterTestCountingOverride"] = AdaClusterTestCountingOverride
NODE_DISPLAY_NAME_MAPPINGS["AdaClusterTestCountingOverride"] = "AdaCluster TEST: counting attention override"


class AdaClusterTestContextLatents:
    """CONDITIONING + `context_latents` (upstream Wan's in-context reference latents, appended to the
    video tokens by the model): one seeded random latent [1, channels, frames, h, w]. A ComfyUI
    whose Wan does not know the key ignores it."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning": ("CONDITIONING",),
                             "channels": ("INT", {"default": 16, "min": 1, "max": 128}),
                             "frames": ("INT", {"default": 1, "min": 1, "max": 64}),
                             "height": ("INT", {"default": 8, "min": 1, "max": 256}),
                             "width": ("INT", {"default": 8, "min": 1, "max": 256}),
                             "seed": ("INT", {"default": 0, "min": 0, "max": 2**31})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "attach"
    CATEGORY = "adacluster_test"

    def attach(self, conditioning, channels, frames, height, width, seed):
        g = torch.Generator().manual_seed(seed)
        lat = torch.randn(1, channels, frames, height, width, generator=g)
        return ([[c[0], dict(c[1], context_latents=[lat])] for c in conditioning],)


NODE_CLASS_MAPPINGS["AdaClusterTestContextLatents"] = AdaClusterTestContextLatents


class AdaClusterTestH3Task:
    """CONDITIONING for MiniMax-H3's three tasks without a VAE or text encoder: t2va passes it on,
    fl2va adds two keyframes (first frame + last frame with audio; random latents as the VAEs would
    give), ref2va a reference image block and a reference audio block."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning": ("CONDITIONING",), "latent": ("LATENT",),
                             "task": (["t2va", "fl2va", "ref2va"],),
                             "seed": ("INT", {"default": 0, "min": 0, "max": 2**31})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "attach"
    CATEGORY = "adacluster_test"

    def attach(self, conditioning, latent, task, seed):
        from comfy.ldm.minimax.model import FRAME_PER_TOKEN
        video, audio = latent["samples"].tensors[:2]
        h, w = video.shape[3], video.shape[4]
        g = torch.Generator().manual_seed(seed)
        if task == "t2va":
            return (conditioning,)
        if task == "fl2va":
            frames = sum(FRAME_PER_TOKEN[i % 5] for i in range(video.shape[2]))
            kfs = [{"resolved_frame_index": 0, "latent": torch.randn(1, 24, 1, h, w, generator=g)},
                   {"resolved_frame_index": frames - 1, "latent": torch.randn(1, 24, 1, h, w, generator=g),
                    "audio_latent": torch.randn(1, 32, 2, 2, generator=g)}]
            return ([[c[0], dict(c[1], minimax_keyframes=kfs)] for c in conditioning],)
        refs = [{"kind": "image", "latent_h": 4, "latent_w": 4, "latent": torch.randn(1, 24, 1, 4, 4, generator=g)},
                {"kind": "audio", "ref_audio_t": 6, "audio_latent": torch.randn(1, 32, 2, 6, generator=g)}]
        return ([[c[0], dict(c[1], minimax_refs=refs)] for c in conditioning],)


NODE_CLASS_MAPPINGS["AdaClusterTestH3Task"] = AdaClusterTestH3Task
NODE_DISPLAY_NAME_MAPPINGS["AdaClusterTestH3Task"] = "AdaCluster TEST: MiniMax-H3 task conditioning"

def _write_count(name, data):
    import json

    out = os.environ.get("ADACLUSTER_TEST_OUT")
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, f"counter_{_safe_name(name)}.json"), "w") as f:
            json.dump(data, f)


class AdaClusterTestReplacingOverride:
    """MODEL -> MODEL with an optimized_attention_override that REPLACES whatever is on the hook (no
    chaining, as Sage-patch-style nodes and core's ModelAttentionBackend do) and runs `func`, counting
    its calls: $ADACLUSTER_TEST_OUT/counter_<name>.json = {"calls": n} at ON_CLEANUP."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "name": ("STRING", {"default": "replacer"})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "adacluster_test"

    def patch(self, model, name):
        import comfy.patcher_extension as pe

        m = model.clone()
        counter = {"calls": 0}

        def replacing_override(func, *args, **kwargs):
            counter["calls"] += 1
            return func(*args, **kwargs)

        m.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = replacing_override
        m.add_callback_with_key(pe.CallbacksMP.ON_PRE_RUN, "adacluster_test_replacer",
                                lambda patcher: counter.update(calls=0))
        m.add_callback_with_key(pe.CallbacksMP.ON_CLEANUP, "adacluster_test_replacer",
                                lambda patcher: _write_count(name, dict(counter)))
        return (m,)


class AdaClusterTestReversedKeys:
    """MODEL -> MODEL whose attention sums over the keys in reversed token order: the same dense
    attention (it is invariant under a permutation of the keys with their values and mask columns),
    different fp32 rounding. A server test uses the latent it gives as the reference for "equal up to
    summation order". Tensors only (a ComfyUI attention container is passed on unchanged)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "adacluster_test"

    def patch(self, model):
        m = model.clone()

        def reversed_keys(func, q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
                          skip_output_reshape=False, **kwargs):
            if isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor) and k.shape[:-1] == v.shape[:-1]:
                dim = 2 if skip_reshape else 1          # [B, H, L, D] or [B, L, H*D]
                lk = k.shape[dim]
                k, v = k.flip(dim), v.flip(dim)
                if isinstance(mask, torch.Tensor) and mask.shape[-1] == lk:
                    mask = mask.flip(-1)
            return func(q, k, v, heads, mask=mask, attn_precision=attn_precision, skip_reshape=skip_reshape,
                        skip_output_reshape=skip_output_reshape, **kwargs)

        m.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = reversed_keys
        return (m,)


NODE_CLASS_MAPPINGS["AdaClusterTestReversedKeys"] = AdaClusterTestReversedKeys


class AdaClusterTestCountBackend:
    """MODEL -> MODEL unchanged; wraps ComfyUI's registered "pytorch" attention function (what core's
    ModelAttentionBackend picks for "pytorch attention") with a counter, once per server, so a test
    can see which calls ran through the backend the user chose: counter_<name>.json at ON_CLEANUP.
    Must execute before the ModelAttentionBackend node (wire it before)."""

    COUNT = {"calls": 0}

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "name": ("STRING", {"default": "backend"})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "adacluster_test"

    def patch(self, model, name):
        import functools

        import comfy.ldm.modules.attention as A
        import comfy.patcher_extension as pe

        reg = getattr(A, "REGISTERED_ATTENTION_FUNCTIONS", {})
        orig = reg.get("pytorch")
        if orig is not None and not getattr(orig, "_adacluster_test_counting", False):
            count = self.COUNT

            @functools.wraps(orig)
            def counting(*args, **kwargs):
                count["calls"] += 1
                return orig(*args, **kwargs)

            counting.container_function = getattr(orig, "container_function", None)
            counting._adacluster_test_counting = True
            reg["pytorch"] = counting
        m = model.clone()
        m.add_callback_with_key(pe.CallbacksMP.ON_PRE_RUN, "adacluster_test_backend",
                                lambda patcher: self.COUNT.update(calls=0))
        m.add_callback_with_key(pe.CallbacksMP.ON_CLEANUP, "adacluster_test_backend",
                                lambda patcher: _write_count(name, dict(self.COUNT)))
        return (m,)


class AdaClusterTestSparseOverride:
    """MODEL -> MODEL with a "sparse" attention override in the style of core's Model Sparse Attention
    (after ComfyUI 0.33): it chains the previous override, re-installs itself on top at every step
    (ON_PREPARE_STATE) unless it is already there, and says it is sparse (`sparse_attention` attribute,
    the name the Stats node shows). It "takes" (runs itself, through `func`) the self-attention calls of
    the first sampler step and passes every other call on; counter_<name>.json = {"taken", "passed"}."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "name": ("STRING", {"default": "sparse"})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "adacluster_test"

    def patch(self, model, name):
        import comfy.patcher_extension as pe

        counter = {"taken": 0, "passed": 0}
        installed = []

        def first_step(to):
            sig, ss = to.get("sigmas"), to.get("sample_sigmas")
            if not isinstance(sig, torch.Tensor) or not isinstance(ss, torch.Tensor) or not ss.numel():
                return False
            return float(sig.max()) >= float(ss[0]) - 1e-6

        def make(previous):
            def override(func, q, k, v, *args, **kwargs):
                to = kwargs.get("transformer_options") or {}
                skip = kwargs.get("skip_reshape", False)
                if tuple(q.shape) == tuple(k.shape) and first_step(to) and q.shape[-2 if skip else 1] > 32:
                    counter["taken"] += 1
                    return func(q, k, v, *args, **kwargs)
                counter["passed"] += 1
                return previous(func, q, k, v, *args, **kwargs) if previous else func(q, k, v, *args, **kwargs)

            override.sparse_attention = f"TEST sparse ({name})"
            installed.append(override)
            return override

        def install(to):
            cur = to.get("optimized_attention_override")
            if not any(cur is o for o in installed):
                to["optimized_attention_override"] = make(cur)

        def on_prepare_state(patcher, *a):
            mo = a[1] if len(a) > 1 else patcher.model_options
            install(mo.setdefault("transformer_options", {}))

        m = model.clone()
        install(m.model_options.setdefault("transformer_options", {}))
        m.add_callback_with_key(pe.CallbacksMP.ON_PREPARE_STATE, "adacluster_test_sparse", on_prepare_state)
        m.add_callback_with_key(pe.CallbacksMP.ON_PRE_RUN, "adacluster_test_sparse",
                                lambda patcher: counter.update(taken=0, passed=0))
        m.add_callback_with_key(pe.CallbacksMP.ON_CLEANUP, "adacluster_test_sparse",
                                lambda patcher: _write_count(name, dict(counter, chain=len(installed))))
        return (m,)


for _cls, _title in ((AdaClusterTestReplacingOverride, "replacing attention override"),
                     (AdaClusterTestCountBackend, "count the pytorch attention backend"),
                     (AdaClusterTestSparseOverride, "re-installing sparse attention override")):
    NODE_CLASS_MAPPINGS[_cls.__name__] = _cls
    NODE_DISPLAY_NAME_MAPPINGS[_cls.__name__] = f"AdaCluster TEST: {_title}"

class AdaClusterTestPoisonImage:
    """IMAGE with NaN / +Inf / -Inf written into one frame (-1: every frame), at one pixel or the
    whole frame, or with one frame replaced by noise (value "noise": a real, finite difference)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",),
                             "frame": ("INT", {"default": 0, "min": -1, "max": 4096}),
                             "value": (["nan", "inf", "-inf", "noise"],),
                             "whole_frame": ("BOOLEAN", {"default": False})}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "poison"
    CATEGORY = "adacluster_test"

    def poison(self, image, frame, value, whole_frame):
        x = image.clone()
        sel = slice(None) if frame < 0 else slice(frame, frame + 1)
        if value == "noise":
            x[sel] = torch.rand(x[sel].shape, generator=torch.Generator().manual_seed(0))
            return (x,)
        v = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}[value]
        if whole_frame:
            x[sel] = v
        else:
            x[sel, 0, 0, 0] = v
        return (x,)


NODE_CLASS_MAPPINGS["AdaClusterTestPoisonImage"] = AdaClusterTestPoisonImage
