"""Which Wan / HunyuanVideo variants of the ComfyUI under test go sparse and which stay dense:
MEASURED by running one forward of each variant's real ComfyUI model class (tiny random weights,
CPU) with the inputs that variant's nodes feed it, through the patcher's wrapper + override, with
every key cluster selected (so a sparse call must equal dense). The expectations below are the
table in README.md ("Supported models and ComfyUI versions"); a variant whose class or input this
ComfyUI lacks is skipped with that reason (feature test, not a version number)."""
from __future__ import annotations

import inspect

import pytest
import torch

from tests.comfy._helpers import comfy_inprocess, load_nodes_module

_why = comfy_inprocess()
pytestmark = [pytest.mark.skipif(_why is not None, reason=str(_why)), pytest.mark.per_version]
if _why is None:
    P = load_nodes_module("patcher")
    CW = load_nodes_module("config_widgets")
    import comfy.ops
    import comfy.patcher_extension as pe

SPARSE = "sparse"
BASE = dict(patch_size=(1, 2, 2), text_len=16, in_dim=16, dim=256, ffn_dim=512, freq_dim=256, text_dim=64,
            out_dim=16, num_heads=2, num_layers=2)


def _r(*s):
    return torch.randn(*s)


# name -> (module, class, constructor kwargs, forward kwargs, x shape, expected: "sparse" or the dense reason)
# x [1, 16, 2, 8, 8] -> grid 2x4x4 = 32 video tokens; text context 20 tokens.
WAN = {
    "Wan T2V": ("model", "WanModel", {}, {}, SPARSE),
    "Wan I2V (CLIP image, clip_fea)": ("model", "WanModel", dict(model_type="i2v"),
                                       dict(clip_fea=lambda: _r(1, 257, 1280)), SPARSE),
    "Wan in-context reference (context_latents)": ("model", "WanModel", {},
                                                   dict(context_latents=lambda: [_r(1, 16, 1, 8, 8)]), SPARSE),
    "Wan Phantom (time_dim_concat)": ("model", "WanModel", {}, dict(time_dim_concat=lambda: _r(1, 16, 1, 8, 8)),
                                      SPARSE),
    "Wan Fun reference (reference_latent)": ("model", "WanModel", dict(in_dim_ref_conv=16),
                                             dict(reference_latent=lambda: _r(1, 16, 8, 8)), "token-count-mismatch"),
    "Wan Fun camera (camera_conditions)": ("model", "CameraWanModel", {},
                                           dict(camera_conditions=lambda: _r(1, 24, 2, 64, 64)), SPARSE),
    "Wan VACE (vace_context)": ("model", "VaceWanModel", dict(vace_layers=1, vace_in_dim=16),
                                dict(vace_context=lambda: _r(1, 1, 16, 2, 8, 8), vace_strength=lambda: [1.0]),
                                "unsupported-model (Wan VACE)"),
    "Wan 2.2 S2V (audio only)": ("model", "WanModel_S2V", dict(audio_inject_layers=[0, 1]),
                                 dict(audio_embed=lambda: _r(1, 25, 1024, 8)), SPARSE),
    "Wan 2.2 S2V + reference image": ("model", "WanModel_S2V", dict(audio_inject_layers=[0, 1]),
                                      dict(audio_embed=lambda: _r(1, 25, 1024, 8),
                                           reference_latent=lambda: _r(1, 16, 1, 8, 8)), "token-count-mismatch"),
    "Wan HuMo + reference image": ("model", "HumoWanModel", {}, dict(reference_latent=lambda: _r(1, 16, 1, 8, 8)),
                                   "token-count-mismatch"),
    "Wan 2.2 Animate (pose_latents)": ("model_animate", "AnimateWanModel", {},
                                       dict(pose_latents=lambda: _r(1, 16, 1, 8, 8)), SPARSE),
    "Wan SCAIL + reference image": ("model", "SCAILWanModel", {}, dict(reference_latent=lambda: _r(1, 16, 1, 8, 8)),
                                    "token-count-mismatch"),
}


def _all_clusters_run():
    cfg = CW.make_config(q_clusters=6, k_clusters=8, k_clusters_init=8, top_k=4096, warmup=0.0, min_tokens=0,
                        dense_layer_fraction=0.0, calibration_dense=False, backend="torch")
    run = P.PatchHolder(cfg, None, "auto")
    run.override = P.make_override(run)
    run.begin(None)
    return run


def _measure(dm, x, ctx, fkw, **extra):
    """One forward patched and one unpatched: (last_run stats, max |patched - unpatched| / max(1, max |unpatched|))."""
    run = _all_clusters_run()
    wrapper = P._diffusion_model_wrapper_factory(run)

    def fwd(patched):
        to = {"sigmas": torch.tensor([0.5])}
        if patched:
            to["optimized_attention_override"] = run.override
            to["wrappers"] = {pe.WrappersMP.DIFFUSION_MODEL: {P.WRAPPER_KEY: [wrapper]}}
        with torch.no_grad():
            return dm(x, torch.tensor([500.0]), ctx, transformer_options=to, **fkw, **extra)

    ref = fwd(False)
    err = (fwd(True) - ref).abs().max().item() / max(1.0, ref.abs().max().item())   # relative to the output scale
    P.end_run(run, None)
    return run.last_run, err


def _check(s, err, expected, name):
    if expected == SPARSE:
        assert s["sparse_calls"] > 0 and not (set(s["dense_reasons"]) - {"cross-attn"}), (name, s["summary"])
        assert err < 1e-4, f"{name}: every cluster selected, yet patched != unpatched by {err}"
    else:
        assert s["sparse_calls"] == 0 and expected in s["dense_reasons"], (name, s["summary"])
        assert err == 0.0, f"{name}: a dense run must be bit-identical, differs by {err}"


@pytest.mark.parametrize("name", list(WAN))
def test_wan_variant(name):
    import importlib

    modname, clsname, ckw, fkw, expected = WAN[name]
    mod = importlib.import_module(f"comfy.ldm.wan.{modname}")
    cls = getattr(mod, clsname, None)
    if cls is None:
        pytest.skip(f"this ComfyUI has no comfy.ldm.wan.{modname}.{clsname}")
    params = set(inspect.signature(cls.__init__).parameters)
    if not set(ckw) <= params:
        pytest.skip(f"this ComfyUI's {clsname} has no {sorted(set(ckw) - params)}")
    src = inspect.getsource(cls)
    missing = [k for k in fkw if k not in src and k not in inspect.getsource(mod.WanModel if hasattr(mod, "WanModel")
                                                                             else cls)]
    if missing:
        pytest.skip(f"this ComfyUI's {clsname} takes no {missing}")
    torch.manual_seed(0)
    dm = cls(**BASE, **ckw, operations=comfy.ops.disable_weight_init)
    with torch.no_grad():
        for p_ in dm.parameters():
            p_.normal_(0, 0.05)
    s, err = _measure(dm, _r(1, 16, 2, 8, 8), _r(1, 20, 64), {k: f() for k, f in fkw.items()})
    fo = inspect.getsource(cls.forward_orig)
    if "block(x, e=e0, freqs=freqs, context=context)" in fo:
        # this ComfyUI's class calls its blocks without transformer_options (0.3.75's S2V): no
        # attention call can reach any override; it runs plain dense, untouched
        assert s["calls"] == 0 and err == 0.0, s["summary"]
        return
    _check(s, err, expected, name)


def test_wan_context_window():
    """Context windows (comfy/context_windows.py) run the model on one window of frames at a time:
    the forward's latent is the window, so its layout is a video grid of its own and goes sparse."""
    import comfy.ldm.wan.model as W

    torch.manual_seed(0)
    dm = W.WanModel(**BASE, operations=comfy.ops.disable_weight_init)
    with torch.no_grad():
        for p_ in dm.parameters():
            p_.normal_(0, 0.05)
    for frames in (1, 3):     # two window lengths through one model
        s, err = _measure(dm, _r(1, 16, frames, 8, 8), _r(1, 20, 64), {})
        _check(s, err, SPARSE, f"window of {frames} latent frames")


# HunyuanVideo: the tiny checkpoints loaded through ComfyUI's own loader (real detection)
HUNYUAN = {
    "HunyuanVideo 1.0 T2V": ("hunyuan", {}, SPARSE),
    "HunyuanVideo 1.0 padded text (attention_mask)": ("hunyuan", dict(attention_mask=lambda: torch.cat(
        [torch.ones(1, 12), torch.zeros(1, 4)], 1).long()), SPARSE),   # as the text encoder gives it
    "HunyuanVideo reference latent (ref_latent, HunyuanCustom)": ("hunyuan", dict(ref_latent=lambda: _r(1, 16, 1, 8, 8)),
                                                                  "token-count-mismatch"),
    "HunyuanVideo 1.5 T2V": ("hunyuan15", {}, SPARSE),
}


@pytest.mark.parametrize("name", list(HUNYUAN))
def test_hunyuan_variant(name, tiny_models):
    import comfy.sd

    fam, fkw, expected = HUNYUAN[name]
    mp = comfy.sd.load_diffusion_model(str(tiny_models[fam]), model_options={"dtype": torch.float32})
    dm = mp.model.diffusion_model
    if "ref_latent" in fkw and "ref_latent" not in inspect.signature(dm.forward).parameters:
        pytest.skip("this ComfyUI's HunyuanVideo takes no ref_latent")
    ch = mp.model.latent_format.latent_channels
    in_ch = dm.img_in.proj.weight.shape[1] if hasattr(dm.img_in, "proj") else ch
    x = _r(1, in_ch, 2, 8, 8)
    extra = {}
    if fam == "hunyuan":
        extra = dict(y=_r(1, 768), guidance=torch.tensor([6.0]))
        ctx = _r(1, 16, 4096)
    else:
        ctx = _r(1, 16, 3584)
    if "ref_latent" in fkw:
        fkw = dict(ref_latent=lambda: _r(1, in_ch, 1, 8, 8))
    s, err = _measure(dm, x, ctx, {k: f() for k, f in fkw.items()}, **extra)
    if "attention_mask" in fkw:   # the 4 padded text keys reached the override as masked keys
        assert s["layouts"][0]["masked_keys"] == 4 and s["layouts"][0]["masked_keys_in_text"] == 4, s["layouts"]
    if expected == SPARSE:
        assert s["sparse_calls"] > 0 and not (set(s["dense_reasons"]) - {"text-only (refiner)"}), (name, s["summary"])
        assert err < 2e-3, f"{name}: every cluster selected, yet patched != unpatched by {err}"
    else:
        assert s["sparse_calls"] == 0 and expected in s["dense_reasons"], (name, s["summary"])
        assert err == 0.0
