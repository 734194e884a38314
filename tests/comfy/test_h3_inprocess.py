"""MiniMax-H3 (ComfyUI >= 0.33) in the test process: ComfyUI's own `MiniMaxH3Model` (tiny, random
weights) through the pack's wrapper + override. The packed sequence [text | cond / reference rows |
audio | video] goes sparse on the video rows only; every other row is exact. Skipped on a ComfyUI
without `comfy.ldm.minimax` (0.3.75, 0.26)."""
from __future__ import annotations

import pytest
import torch

from tests.comfy._helpers import comfy_inprocess, load_nodes_module

_why = comfy_inprocess()
if _why is None:
    try:
        import comfy.ldm.minimax.model as H3
    except ImportError:
        _why = "this ComfyUI has no MiniMax-H3 (comfy.ldm.minimax, ComfyUI >= 0.33)"
pytestmark = pytest.mark.skipif(_why is not None, reason=str(_why))
if _why is None:
    P = load_nodes_module("patcher")
    CW = load_nodes_module("config_widgets")
    REP = load_nodes_module("report")
    PRB = load_nodes_module("probe")
    import comfy.ops
    import comfy.patcher_extension as pe

TEXT = 16
VIDEO = (7, 8, 16)          # latent (t, h, w): grid 7 x 4 x 8 = 224 video rows
AUDIO_T = 20                # 40 audio rows (stereo)
N_VID = 7 * 4 * 8


def _model(layers=2, seed=0):
    torch.manual_seed(seed)
    dm = H3.MiniMaxH3Model(hidden_size=256, num_layers=layers, token_refiner_num_layers=1, num_attention_heads=2,
                           attention_head_dim=128, ffn_hidden_size=512, text_dim=64, timestep_input_dim=256,
                           time_embed_hidden_size=256, time_embed_dim=128, operations=comfy.ops.disable_weight_init)
    with torch.no_grad():
        for p_ in dm.parameters():
            p_.normal_(0, 0.05)
        dm.rope.inv_freq.copy_(10000.0 ** (-torch.arange(16, dtype=torch.float32) / 16))
    return dm.requires_grad_(False)   # ComfyUI's in-place rope refuses parameters that need grad


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 24, *VIDEO, generator=g), torch.randn(1, 32, 2, AUDIO_T, generator=g),
            torch.randn(1, TEXT, 64, generator=g))


def _payload(kind: str, g=None):
    """The conditioning payloads of the three tasks, as ComfyUI's H3 nodes build them."""
    g = g or torch.Generator().manual_seed(5)
    if kind == "t2va":
        return {}
    if kind == "fl2va":
        kfs = [{"resolved_frame_index": 0, "latent": torch.randn(1, 24, 1, 8, 16, generator=g)},
               {"resolved_frame_index": 20, "latent": torch.randn(1, 24, 1, 8, 16, generator=g),
                "audio_latent": torch.randn(1, 32, 2, 4, generator=g)}]
        return {"keyframes": kfs, "cond_video_latents": [k["latent"] for k in kfs],
                "cond_audio_latents": [kfs[1]["audio_latent"]]}
    refs = [{"kind": "image", "latent_h": 4, "latent_w": 4, "latent": torch.randn(1, 24, 1, 4, 4, generator=g)},
            {"kind": "audio", "ref_audio_t": 6, "audio_latent": torch.randn(1, 32, 2, 6, generator=g)}]
    return {"refs": refs, "cond_video_latents": [refs[0]["latent"]], "cond_audio_latents": [refs[1]["audio_latent"]]}


class _MS:   # model_sampling stand-in: flow, sigma = 1 - percent
    @staticmethod
    def percent_to_sigma(p):
        return 1.0 - p


def _patched_run(cfg, previous=None):
    run = P.PatchHolder(cfg, None, "auto", previous_override=previous)
    run.override = P.make_override(run, previous)
    return run, P._diffusion_model_wrapper_factory(run)


def _begin(run):
    run.begin(type("Patcher", (), {"model": type("M", (), {"model_sampling": _MS()})()})())


def _forward(dm, x, ctx, payload, sig, run=None, wrapper=None, schedule=None, extra_to=None):
    to = {"sigmas": torch.tensor([sig])}
    if schedule is not None:
        to["sample_sigmas"] = schedule
    if run is not None:
        to["optimized_attention_override"] = run.override
        to["wrappers"] = {pe.WrappersMP.DIFFUSION_MODEL: {P.WRAPPER_KEY: [wrapper]}}
    to.update(extra_to or {})
    with torch.inference_mode():
        return dm(list(x), torch.tensor([sig * 1000]), ctx, transformer_options=to, minimax_payload=dict(payload))


def _cfg(**kw):
    base = dict(q_clusters=8, k_clusters_init=16, top_k=4096, warmup=0.0, min_tokens=0, dense_layer_fraction=0.0,
                backend="torch", calibration_dense=False)
    base.update(kw)
    return CW.make_config(**base)


@pytest.mark.parametrize("task", ["t2va", "fl2va", "ref2va"])
def test_every_cluster_selected_reproduces_dense(task):
    """top_k >= key clusters: the sparse path over the video rows + the exact prefix == dense, for
    the three tasks' packed layouts; the Stats layout names the task and the rows."""
    dm = _model()
    video, audio, ctx = _inputs()
    payload = _payload(task)
    run, wrapper = _patched_run(_cfg())
    _begin(run)
    got = _forward(dm, (video, audio), ctx, payload, 0.5, run, wrapper)
    ref = _forward(dm, (video, audio), ctx, payload, 0.5)
    P.end_run(run, None)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, atol=2e-5, rtol=1e-4)
    s = run.last_run
    assert s["family"] == "h3" and s["sparse_calls"] == 2 and s["min_density"] == pytest.approx(1.0), s["summary"]
    lay = s["layouts"][0]
    assert lay["n_vid"] == N_VID and lay["grid"] == [7, 4, 8]
    desc = lay["description"]
    assert desc.startswith(f"H3 {task}: text {TEXT}") and desc.endswith("video 7x4x8"), desc
    assert f"audio {2 * AUDIO_T}" in desc
    if task == "fl2va":
        assert "cond 64" in desc and "cond audio 8" in desc, desc        # two keyframes of 4x8 rows, 4 audio frames
    if task == "ref2va":
        assert "ref img 4" in desc and "ref audio 12" in desc, desc
    assert "H3 " + task in REP.format_stats(s)


def test_prefix_rows_are_exact_and_video_rows_sparse():
    """A sparse config on real H3 attention inputs: every non-video row (text, cond, audio) of the
    call's output equals dense attention within the all-clusters tolerance, while the video rows
    are approximated (density < 1)."""
    dm = _model(layers=1)
    video, audio, ctx = _inputs()
    run, wrapper = _patched_run(_cfg(top_k=2, q_clusters=4, k_clusters=12, max_density=0.3))
    calls = []

    ours = run.override

    def recorder(func, q, k, v, heads, **kw):   # outermost, chaining to ours: sees what it receives and returns
        out = ours(func, q, k, v, heads, **kw)
        calls.append((q.clone(), k.clone(), v.clone(), out.clone()))
        return out

    _begin(run)
    _forward(dm, (video, audio), ctx, _payload("fl2va"), 0.5, run, wrapper,
             extra_to={"optimized_attention_override": recorder})
    P.end_run(run, None)
    s = run.last_run
    assert s["sparse_calls"] == 1 and s["max_density"] < 0.9, s["summary"]
    n_pre = s["layouts"][0]["n_txt"]
    assert n_pre == TEXT + 64 + 8 + 2 * AUDIO_T      # text, two keyframes' rows, keyframe audio, target audio
    q, k, v, out = next(c for c in calls if c[0].shape[2] == n_pre + N_VID)
    B, H, L, D = q.shape
    ref = torch.softmax((q.double() @ k.double().transpose(-1, -2)) * D ** -0.5, -1) @ v.double()
    ref = ref.transpose(1, 2).reshape(B, L, H * D)
    err_pre = ((out[:, :n_pre].double() - ref[:, :n_pre]).norm() / ref[:, :n_pre].norm()).item()
    err_vid = ((out[:, n_pre:].double() - ref[:, n_pre:]).norm() / ref[:, n_pre:].norm()).item()
    # exact rows: fp32 attention vs the fp64 reference, summation order only (~1e-7)
    assert err_pre < 1e-5, err_pre
    assert err_vid > 10 * err_pre, (err_vid, err_pre)   # the video rows really went sparse


def test_last_warmup_step_calibrates_and_second_generation_uses_cache():
    """An 8-step schedule (turbo LoRA style) with warmup 0.3: steps 0-2 are warmup and the last of
    them measures the key-cluster counts (calibration), so 5 steps run sparse in the first
    generation (there used to be a separate dense calibration step: 4); the second generation takes
    the counts from the plan cache: the last warmup step stays plain dense, 5 sparse steps."""
    dm = _model()
    video, audio, ctx = _inputs()
    sched = torch.tensor([1.0 - i / 8 for i in range(8)] + [0.0])
    cfg = CW.make_config(q_clusters=8, k_clusters_init=16, top_k=4096, warmup=0.3, min_tokens=0,
                        dense_layer_fraction=0.0, backend="torch")
    run, wrapper = _patched_run(cfg)
    for gen in (1, 2):
        _begin(run)
        for sig in sched[:-1].tolist():
            _forward(dm, (video, audio), ctx, {}, sig, run, wrapper, schedule=sched)
        P.end_run(run, None)
        s = run.last_run
        # sigma 1.0, 0.875, 0.75 > 0.7 -> warmup (2 layers each)
        if gen == 1:
            assert s["dense_reasons"] == {"warmup": 4, "calibration": 2, "text-only (refiner)": 8}, s["dense_reasons"]
            assert s["plan_source"] == "calibration"
        else:
            assert s["dense_reasons"] == {"warmup": 6, "text-only (refiner)": 8}, s["dense_reasons"]
            assert s["plan_source"] == "cache"
        assert s["sparse_calls"] == 10, s["summary"]


def test_probe_capture_and_tuner_on_h3(tmp_path):
    """Probe, Capture and the offline tuner work on H3 as on Wan: the probe passes the dense result on
    and measures the sparse one per layer; Capture writes the video self-attention calls with the
    packed prefix as the text range; the tuner replays them into an h3 profile."""
    C = load_nodes_module("capture")
    from adacluster_core import tune

    dm = _model()
    video, audio, ctx = _inputs()
    cfg = _cfg(top_k=2, q_clusters=4, k_clusters=12, max_density=0.3)
    run = P.PatchHolder(cfg, None, "auto", probe=PRB.make_probe("on"))
    run.override = P.make_override(run, None)
    wrapper = P._diffusion_model_wrapper_factory(run)
    _begin(run)
    got = _forward(dm, (video, audio), ctx, {}, 0.5, run, wrapper)
    P.end_run(run, None)
    ref = _forward(dm, (video, audio), ctx, {}, 0.5)
    for g, r in zip(got, ref):     # probed calls pass the dense result on: the forward is the dense one
        torch.testing.assert_close(g, r, atol=2e-5, rtol=1e-4)
    pr = run.last_run["probe"]
    assert pr and run.last_run["sparse_calls"] == 2, run.last_run["summary"]
    assert "probe" in REP.format_stats(run.last_run).lower()

    # Capture (unpatched model): the two layers' video self-attention inputs, prefix = the text range
    cap = C.CaptureRun("*", "*", 4, 64.0, "h3cap", str(tmp_path))
    ov = C.make_capture_override(cap, None)
    to_extra = {"optimized_attention_override": ov}
    begin = C._begin_forward

    def cap_wrapper(executor, *args, **kwargs):
        begin(cap, executor.class_obj, args, kwargs)
        return executor(*args, **kwargs)

    to = {"sigmas": torch.tensor([0.5]), "wrappers": {pe.WrappersMP.DIFFUSION_MODEL: {"cap": [cap_wrapper]}}, **to_extra}
    with torch.inference_mode():
        dm([video, audio], torch.tensor([500.0]), ctx, transformer_options=to, minimax_payload={})
    cap.completed = True
    path = cap.write(type(dm).__name__)
    c = tune.load_capture(path)
    assert c.meta["family"] == "h3" and len(c.calls) == 2
    n_pre = TEXT + 2 * AUDIO_T
    assert c.text_range == (0, n_pre) and c.calls[0].q.shape[2] == n_pre + N_VID
    prof = tune.tune(c, 0.5, overrides=dict(q_clusters=4, k_clusters=12, min_tokens=0), backend="torch")
    assert prof["family"] == "h3" and set(prof["layers"]) == {"0", "1"}, prof
