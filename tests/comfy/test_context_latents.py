"""Upstream Wan's `context_latents` (in-context reference latents, ComfyUI >= 0.2x): their tokens
are appended after the video tokens in every self-attention call. The patcher maps them to an
always-dense range after the video (they attend to everything and everything attends to them),
so those calls go sparse instead of dense with `token-count-mismatch`.

Synthetic calls run on every ComfyUI; the real WanModel forward runs where the ComfyUI under test
has the feature (feature test on WanModel's source, not a version number)."""
from __future__ import annotations

import inspect

import pytest
import torch

from tests.comfy._helpers import comfy_inprocess, load_nodes_module, tiny_wan_model

_why = comfy_inprocess()
pytestmark = pytest.mark.skipif(_why is not None, reason=str(_why))
if _why is None:
    P = load_nodes_module("patcher")
    CW = load_nodes_module("config_widgets")
    import comfy.patcher_extension as pe
    from tests.comfy.test_patcher_inprocess import _dense_func


def _wan_has_context_latents() -> bool:
    import comfy.ldm.wan.model as W
    return "context_latents" in inspect.getsource(W.WanModel)


class _FakeWan(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks, self.text_embedding, self.patch_size = [object(), object()], object(), (1, 2, 2)


def _cfg(**kw):
    base = dict(q_clusters=4, k_clusters=6, k_clusters_init=6, top_k=2, selection="centroid", warmup=0.0,
                min_tokens=0, calibration_dense=False, dense_layer_fraction=0.0, backend="torch")
    base.update(kw)
    return CW.make_config(**base)


def test_context_latent_tokens_become_an_always_dense_range():
    run = P.PatchHolder(_cfg(), None, "auto")
    run.override = P.make_override(run)
    run.begin(None)
    x = torch.zeros(1, 16, 2, 8, 8)                        # grid (2, 4, 4): 32 video tokens
    refs = [torch.zeros(1, 16, 1, 8, 8), torch.zeros(1, 16, 1, 7, 7)]   # 16 + 16 (padded to the patch)
    to = {"sigmas": torch.tensor([0.5])}
    P._begin_forward(run, _FakeWan(), (x, None, torch.zeros(1, 7, 4096)),
                     {"transformer_options": to, "context_latents": refs})
    fc = to[P.FWD_KEY]
    assert fc.n_vid == 32 and fc.n_extra == 32 and fc.reason == ""
    q = torch.randn(1, 64, 256)
    kind, reason, layout = P.classify_call(fc, q, q, 2, False)
    assert kind == "self" and layout[-1] == (32, 64), (kind, reason, layout)
    # cross-attention (7 text keys) stays "other"; a length matching neither stays dense with the reason
    assert P.classify_call(fc, q, torch.randn(1, 7, 256), 2, False)[0] == "other"
    assert P.classify_call(fc, torch.randn(1, 40, 256), torch.randn(1, 40, 256), 2, False)[:2] == \
        ("dense", "token-count-mismatch")


def test_override_with_context_tokens_is_exact_when_every_cluster_is_selected():
    """All key clusters selected + always-dense in-context tokens = dense attention (1e-5), and the
    call is recorded as sparse; with few clusters selected it is sparse (density < 1) and the
    in-context rows are still exact (they run dense)."""
    torch.manual_seed(0)
    n_vid, n_ctx, H, D = 32, 16, 2, 128
    x = torch.zeros(1, 16, 2, 8, 8)
    ref = torch.zeros(1, 16, 1, 8, 8)
    q, k, v = (torch.randn(1, n_vid + n_ctx, H * D) for _ in range(3))
    want = _dense_func(q, k, v, H)
    for cfg, exact in ((_cfg(top_k=4096), True), (_cfg(top_k=1), False)):
        run = P.PatchHolder(cfg, None, "auto")
        run.override = P.make_override(run)
        run.begin(None)
        to = {"sigmas": torch.tensor([0.5])}
        P._begin_forward(run, _FakeWan(), (x, None, torch.zeros(1, 7, 4096)),
                         {"transformer_options": to, "context_latents": [ref]})
        out = run.override(_dense_func, q, k, v, heads=H, transformer_options=to)
        rec = run.run.records[-1]
        assert rec.sparse is True, f"the call should go sparse, got dense because {rec.reason!r}"
        dens = float(rec.density)
        if exact:
            assert dens == pytest.approx(1.0)
            torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
        else:
            assert dens < 0.9
            torch.testing.assert_close(out[:, n_vid:], want[:, n_vid:], atol=1e-5, rtol=1e-5)
            assert (out[:, :n_vid] - want[:, :n_vid]).abs().max() > 1e-4   # really sparse


@pytest.mark.skipif(_why is None and not _wan_has_context_latents(),
                    reason="this ComfyUI's WanModel has no context_latents input (upstream feature)")
def test_real_wan_forward_with_context_latents_goes_sparse_and_matches_unpatched():
    dm = tiny_wan_model(2)
    cfg = CW.make_config(q_clusters=6, k_clusters=8, k_clusters_init=8, top_k=4096, warmup=0.0, min_tokens=0,
                        dense_layer_fraction=0.0, calibration_dense=False, backend="torch")
    run = P.PatchHolder(cfg, None, "auto")
    run.override = P.make_override(run)
    run.begin(None)
    wrapper = P._diffusion_model_wrapper_factory(run)
    x, ctx = torch.randn(1, 16, 2, 8, 8), torch.randn(1, 16, 64)
    refs = [torch.randn(1, 16, 1, 8, 8)]

    def fwd(patched):
        to = {"sigmas": torch.tensor([0.5])}
        if patched:
            to["optimized_attention_override"] = run.override
            to["wrappers"] = {pe.WrappersMP.DIFFUSION_MODEL: {P.WRAPPER_KEY: [wrapper]}}
        with torch.no_grad():
            return dm(x, torch.tensor([500.0]), ctx, transformer_options=to, context_latents=refs)

    torch.testing.assert_close(fwd(True), fwd(False), atol=1e-5, rtol=1e-4)
    P.end_run(run, None)
    s = run.last_run
    assert "token-count-mismatch" not in s["dense_reasons"], s["summary"]
    assert s["sparse_calls"] == 2, s["summary"]              # both layers' self-attention
    assert s["layouts"][0]["extra_tokens"] == 16 and s["layouts"][0]["n_vid"] == 32
