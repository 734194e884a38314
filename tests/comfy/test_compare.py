"""AdaCluster Compare (nodes/compare*.py).

Offline: the per-frame PSNR against an fp64 reference of 10·log10(1/MSE), SSIM properties
(identical = 1, symmetric, falls as noise grows), the cap, the input checks and the chart.
Real server (ComfyUI 0.3.75, CPU, tests/harness/make_ab_models.py: a tiny random-weight Wan 2.1
whose self-attention matters + a tiny Wan 2.1 VAE): identical decoded frames give the PSNR cap and
SSIM 1; mismatched frame counts / sizes fail the node with a message naming the input; and the
metric moves the right way: a tiny budget lands further from dense (lower PSNR and SSIM) than a
larger one, and both further than selecting every key cluster.
"""
from __future__ import annotations

import math

import pytest
import torch

from tests.comfy._helpers import TINY, load_nodes_module
from tests.harness.comfy_server import PromptError

cm = load_nodes_module("compare_metrics")
cplot = load_nodes_module("compare_plot")


def _frames(n=4, h=40, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    # smooth-ish content (SSIM of pure noise is uninformative): low-res noise upsampled + fine noise
    base = torch.rand(n, 3, h // 8, w // 8, generator=g)
    img = torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)
    img = (img + 0.05 * torch.rand(n, 3, h, w, generator=g)).clamp(0, 1)
    return img.permute(0, 2, 3, 1).contiguous()


def _noisy(x, sigma, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)


# --------------------------------------------------------------------------------------- offline

def test_psnr_per_frame_matches_fp64_reference():
    ref = _frames()
    test = _noisy(ref, 0.03)
    psnr, _ = cm.frame_metrics(ref, test)
    mse = ((test.double() - ref.double()) ** 2).mean(dim=(1, 2, 3))
    want = (10 * torch.log10(1.0 / mse)).tolist()
    assert len(psnr) == ref.shape[0]
    for got, exp in zip(psnr, want):
        assert abs(got - exp) < 1e-3, (psnr, want)
    assert 25 < min(psnr) < 40  # sigma 0.03 ~ 30 dB: the numbers are in the range the guide talks about


def test_identical_frames_give_the_cap_and_ssim_one():
    ref = _frames()
    psnr, ssim = cm.frame_metrics(ref, ref.clone())
    assert psnr == [cm.PSNR_CAP_DB] * ref.shape[0]
    assert all(abs(s - 1.0) < 1e-5 for s in ssim), ssim
    rep = cm.build_report(psnr, ssim)
    assert rep["identical_frames"] == ref.shape[0] and rep["psnr_mean_db"] == cm.PSNR_CAP_DB
    assert "identical" in rep["verdict"]


def test_ssim_is_symmetric_and_falls_with_noise():
    ref = _frames()
    means = []
    for sigma in (0.01, 0.05, 0.2):
        t = _noisy(ref, sigma)
        _, s_ab = cm.frame_metrics(ref, t)
        _, s_ba = cm.frame_metrics(t, ref)
        assert all(abs(a - b) < 1e-5 for a, b in zip(s_ab, s_ba))
        assert all(-1.0 <= s <= 1.0 for s in s_ab)
        means.append(sum(s_ab) / len(s_ab))
    assert means[0] > means[1] > means[2], means
    assert means[0] > 0.9 and means[2] < 0.7, means


def test_alpha_is_ignored_and_small_frames_use_a_smaller_window():
    ref = _frames(2, 8, 8)
    rgba = torch.cat([ref, torch.rand(2, 8, 8, 1)], dim=-1)
    rgba2 = torch.cat([ref, torch.rand(2, 8, 8, 1)], dim=-1)  # only alpha differs
    psnr, ssim = cm.frame_metrics(rgba, rgba2)
    assert psnr == [cm.PSNR_CAP_DB] * 2 and all(abs(s - 1) < 1e-5 for s in ssim)
    assert cm.ssim_window(8, 8) == 7 and cm.ssim_window(480, 832) == 11


@pytest.mark.parametrize("test_shape, words", [
    ((3, 40, 48, 3), ["frame counts differ", "`test` has 3 frame(s)", "`reference` has 4"]),
    ((4, 20, 48, 3), ["frame sizes differ", "`test` is 48x20", "`reference` is 48x40"]),
    ((4, 40, 48, 1), ["channel counts differ", "`test` has 1"]),
])
def test_mismatched_inputs_raise_naming_the_input(test_shape, words):
    with pytest.raises(cm.CompareInputError) as e:
        cm.frame_metrics(_frames(), torch.rand(*test_shape))
    for w in words:
        assert w in str(e.value), str(e.value)
    with pytest.raises(cm.CompareInputError, match="`reference` is not an IMAGE batch"):
        cm.check_inputs(torch.rand(40, 48, 3), _frames())


def test_difference_video_is_amplified_abs_difference():
    ref = _frames(2)
    test = _noisy(ref, 0.02)
    d = cm.difference_video(ref, test, 8.0)
    assert d.shape == (2, 40, 48, 3)
    want = ((test - ref).abs() * 8.0).clamp(0, 1)
    assert torch.allclose(d, want, atol=1e-6)
    assert float(cm.difference_video(ref, ref, 8.0).abs().max()) == 0.0


def test_report_text_and_verdicts():
    assert "paper" in cm.verdict(30.0) and "quality" in cm.verdict(27.0) and "probe" in cm.verdict(20.0)
    rep = cm.build_report([30.0, 20.0], [0.95, 0.7],
                          cm.sparse_run_summary({"calls": 10, "sparse_calls": 6, "preset": "fast", "family": "wan",
                                                 "mean_density": 0.15, "flops_saved_frac": 0.5}))
    assert rep["worst_frame"] == 1 and rep["psnr_min_db"] == 20.0 and rep["psnr_mean_db"] == 25.0
    text = cm.format_report(rep)
    assert "PSNR  mean 25.00 dB" in text and "preset fast" in text and "6/10" in text
    assert cm.sparse_run_summary(None) is None and cm.sparse_run_summary({"calls": 0}) is None


def test_plot_is_an_image_with_both_series():
    psnr = [30 + math.sin(i / 3) for i in range(17)]
    ssim = [0.9 + 0.05 * math.cos(i / 3) for i in range(17)]
    img = cplot.plot_image(psnr, ssim)
    assert img.shape == (1, 760, 1200, 3) and img.dtype == torch.float32
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    px = img[0].reshape(-1, 3)
    blue = torch.tensor([0x1F, 0x5F, 0xBF]) / 255.0
    red = torch.tensor([0xC0, 0x39, 0x2B]) / 255.0
    assert int(((px - blue).abs().max(dim=1).values < 0.02).sum()) > 500, "no PSNR line drawn"
    assert int(((px - red).abs().max(dim=1).values < 0.02).sum()) > 500, "no SSIM line drawn"
    assert cplot.nice_ticks(0.0, 10.0) == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]


# --------------------------------------------------------------------------------------- server

SPARSE = dict(TINY, k_clusters=8, calibration_dense=False)
TINY_BUDGET = dict(SPARSE, top_k=1, max_density=0.05, pooled_tail=False)
MID_BUDGET = dict(SPARSE, top_k=3, max_density=0.5, pooled_tail=False)
EVERY_CLUSTER = dict(SPARSE, top_k=8192, max_density=1.0)
RUNS = {"dense": None, "tiny": TINY_BUDGET, "mid": MID_BUDGET, "every": EVERY_CLUSTER}


def _ab_prompt(unet_name: str, vae_name: str, steps: int = 4) -> dict:
    """One loader; dense (enabled=false) and three sparse runs at one seed, all decoded by the tiny
    VAE; one Compare node per run against the dense frames (dense vs dense = identical inputs)."""
    p = {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": unet_name, "weight_dtype": "default"}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": vae_name}},
        "cond": {"class_type": "AdaClusterTestZeroConditioning", "inputs": {"tokens": 16, "width": 4096, "pooled_width": 0}},
        "latent": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 64, "height": 64, "length": 9, "batch_size": 1}},
    }
    runs = RUNS
    for name, cfg in runs.items():
        inputs = {"model": ["unet", 0], "preset": "auto", "enabled": cfg is not None}
        if cfg is not None:
            p[f"thr_{name}"] = {"class_type": "AdaClusterThresholds", "inputs": dict(cfg)}
            inputs["config"] = [f"thr_{name}", 0]
        p[f"ada_{name}"] = {"class_type": "AdaClusterSparseAttention", "inputs": inputs}
        p[f"ks_{name}"] = {"class_type": "KSampler", "inputs": {
            "model": [f"ada_{name}", 0], "seed": 7, "steps": steps, "cfg": 2.0, "sampler_name": "euler",
            "scheduler": "simple", "positive": ["cond", 0], "negative": ["cond", 0], "latent_image": ["latent", 0],
            "denoise": 1.0}}
        p[f"dec_{name}"] = {"class_type": "VAEDecode", "inputs": {"samples": [f"ks_{name}", 0], "vae": ["vae", 0]}}
    for name in runs:
        inputs = {"reference": ["dec_dense", 0], "test": [f"dec_{name}", 0], "diff_gain": 8.0}
        if runs[name] is not None:
            inputs["model"] = [f"ada_{name}", 0]
        p[f"cmp_{name}"] = {"class_type": "AdaClusterCompare", "inputs": inputs}
    p["stats_tiny"] = {"class_type": "AdaClusterStats", "inputs": {"model": ["ada_tiny", 0], "samples": ["ks_tiny", 0]}}
    return p


@pytest.fixture(scope="module")
def ab_run(comfy_server, ab_models):
    entry = comfy_server.run_prompt(_ab_prompt(ab_models["wan21_sharp"], ab_models["vae"]), timeout=600)
    return {k: entry["outputs"][f"cmp_{k}"]["adacluster_compare"][0] for k in RUNS}, entry


@pytest.mark.server
def test_compare_node_is_registered(comfy_server):
    info = comfy_server.object_info()["AdaClusterCompare"]
    assert info["output"] == ["FLOAT", "FLOAT", "STRING", "STRING", "IMAGE", "IMAGE"]
    assert info["output_name"] == ["psnr_mean", "ssim_mean", "text", "json", "plot", "difference"]
    assert set(info["input"]["required"]) == {"reference", "test", "diff_gain"}
    assert set(info["input"]["optional"]) == {"model"}
    assert info["output_node"] is True


@pytest.mark.server
def test_identical_decoded_frames_give_cap_and_ssim_one(ab_run):
    rep = ab_run[0]["dense"]
    assert rep["frames"] == 9
    assert rep["psnr_mean_db"] == cm.PSNR_CAP_DB and rep["identical_frames"] == 9
    assert abs(rep["ssim_mean"] - 1.0) < 1e-5 and abs(rep["ssim_min"] - 1.0) < 1e-5
    assert rep["sparse_run"] is None


@pytest.mark.server
def test_smaller_budget_lands_further_from_dense(ab_run):
    reps, entry = ab_run
    tiny, mid, every = reps["tiny"], reps["mid"], reps["every"]
    # every run really went sparse, at the density its budget allows (the Stats summary is in the report)
    for r in (tiny, mid, every):
        assert r["sparse_run"] and r["sparse_run"]["sparse_calls"] > 0, r["sparse_run"]
    assert tiny["sparse_run"]["mean_density"] < mid["sparse_run"]["mean_density"] < every["sparse_run"]["mean_density"]
    # the metric moves the right way, by a margin
    assert tiny["psnr_mean_db"] < mid["psnr_mean_db"] < every["psnr_mean_db"], \
        [r["psnr_mean_db"] for r in (tiny, mid, every)]
    # 20·log10(2) = 6.02 dB: every cluster selected has at most half the RMS frame error of the tiny budget
    assert every["psnr_mean_db"] > tiny["psnr_mean_db"] + 20 * math.log10(2)
    assert tiny["ssim_mean"] <= mid["ssim_mean"] <= every["ssim_mean"], [r["ssim_mean"] for r in (tiny, mid, every)]
    # the yardstick: rounding a frame in [0, 1] to 8 bits (uniform error of one level 1/255, RMS 1/(255·√12))
    # gives PSNR 20·log10(255·√12) = 58.9 dB; checked here against the metric on a frame so rounded
    gen = torch.Generator().manual_seed(0)
    frame = torch.rand(3, 64, 64, generator=gen)
    quant_db = cm.psnr_db(torch.round(frame * 255) / 255, frame)
    assert quant_db == pytest.approx(20 * math.log10(255 * math.sqrt(12)), abs=0.2)
    # a budget that drops keys differs by more than 8-bit rounding ...
    assert tiny["identical_frames"] == 0 and tiny["psnr_mean_db"] < quant_db, (tiny["psnr_mean_db"], quant_db)
    # ... every cluster selected = exact attention up to fp32 rounding: closer than 8-bit rounding
    assert every["psnr_mean_db"] > quant_db, (every["psnr_mean_db"], quant_db)
    # Compare's sparse_run is the Stats of the same run; the Stats JSON points to Compare
    stats = entry["outputs"]["stats_tiny"]["adacluster_stats"][0]
    for k in ("mean_density", "sparse_calls", "calls", "flops_saved_frac"):
        assert tiny["sparse_run"][k] == stats[k], k
    assert "AdaCluster Compare" in stats["quality_check"]
    out = entry["outputs"]["cmp_tiny"]
    assert out["text"][0].startswith("AdaCluster Compare") and f"{tiny['psnr_mean_db']:.2f} dB" in out["text"][0]
    assert out["images"] and out["images"][0]["type"] == "temp"  # the chart preview


def _mismatch_prompt(ref_size, test_size, ref_frames, test_frames) -> dict:
    return {
        "ref": {"class_type": "EmptyImage", "inputs": {"width": ref_size[0], "height": ref_size[1],
                                                       "batch_size": ref_frames, "color": 0x336699}},
        "test": {"class_type": "EmptyImage", "inputs": {"width": test_size[0], "height": test_size[1],
                                                        "batch_size": test_frames, "color": 0x336699}},
        "cmp": {"class_type": "AdaClusterCompare", "inputs": {"reference": ["ref", 0], "test": ["test", 0],
                                                              "diff_gain": 8.0}},
    }


@pytest.mark.server
@pytest.mark.parametrize("args, words", [
    (((64, 64), (64, 64), 9, 5), ["AdaCluster Compare", "frame counts differ", "`test` has 5 frame(s)",
                                  "`reference` has 9"]),
    (((64, 64), (32, 64), 9, 9), ["AdaCluster Compare", "frame sizes differ", "`test` is 32x64",
                                  "`reference` is 64x64"]),
])
def test_mismatched_inputs_fail_the_node_with_a_clear_error(comfy_server, args, words):
    with pytest.raises(PromptError) as e:
        comfy_server.run_prompt(_mismatch_prompt(*args), timeout=120)
    msg = str(e.value)
    assert "AdaClusterCompare" in msg or "cmp" in msg, msg
    for w in words:
        assert w in msg, msg
    assert comfy_server.alive()


def test_plot_draws_without_system_fonts(monkeypatch):
    """No DejaVu/Arial/Liberation on the machine: Pillow's built-in font is used, still a chart."""
    from PIL import ImageFont

    real = ImageFont.truetype

    def no_system_fonts(font=None, *a, **k):
        if isinstance(font, str):  # a font file by name; Pillow's own default font comes as bytes
            raise OSError(f"cannot open resource {font}")
        return real(font, *a, **k)
    monkeypatch.setattr(ImageFont, "truetype", no_system_fonts)
    img = cplot.plot_image([31.0, 24.0, 100.0], [0.95, 0.8, 1.0])
    assert img.shape == (1, 760, 1200, 3)
    assert float(img.std()) > 0.05  # not a blank canvas


def _ssim_direct(x, y, win, sigma=1.5):
    """SSIM straight from the definition in float64: every interior pixel's Gaussian-weighted window
    moments summed explicitly (no convolution, no padding: the 'valid' map), mean over the map."""
    half = win // 2
    t = torch.arange(win, dtype=torch.float64) - half
    g1 = torch.exp(-t * t / (2 * sigma * sigma))
    w = torch.outer(g1, g1)
    w = w / w.sum()
    x, y = x.double(), y.double()
    vals = []
    for i in range(half, x.shape[-2] - half):
        for j in range(half, x.shape[-1] - half):
            px = x[..., i - half:i + half + 1, j - half:j + half + 1]
            py = y[..., i - half:i + half + 1, j - half:j + half + 1]
            mx, my = (w * px).sum((-1, -2)), (w * py).sum((-1, -2))
            vx = (w * px * px).sum((-1, -2)) - mx * mx
            vy = (w * py * py).sum((-1, -2)) - my * my
            cxy = (w * px * py).sum((-1, -2)) - mx * my
            c1, c2 = 0.01 ** 2, 0.03 ** 2
            vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    return torch.stack(vals).mean().item()


def test_ssim_matches_the_direct_formula():
    ref = _frames(1, 20, 24)
    test = _noisy(ref, 0.05)
    _, ssim = cm.frame_metrics(ref, test)
    want = _ssim_direct(test[0].permute(2, 0, 1), ref[0].permute(2, 0, 1), cm.ssim_window(20, 24))
    assert abs(ssim[0] - want) < 1e-5, (ssim, want)


@pytest.mark.parametrize("h, w", [(40, 48), (8, 8), (8, 10), (16, 12)])
def test_metrics_equal_kornias_where_it_is_installed(h, w):
    """The pack computes PSNR / SSIM itself (kornia's newer releases would make pip replace an older
    ComfyUI torch); where kornia is installed the numbers must be the same ones."""
    kornia = pytest.importorskip("kornia")
    ref = _frames(5, h, w)
    test = _noisy(ref, 0.04)
    psnr, ssim = cm.frame_metrics(ref, test)
    win = cm.ssim_window(h, w)
    padding = "valid" if min(h, w) >= win + 2 else "same"
    r, t = ref.permute(0, 3, 1, 2).float(), test.permute(0, 3, 1, 2).float()
    k_psnr = [float(kornia.metrics.psnr(t[i], r[i], 1.0)) for i in range(r.shape[0])]
    k_ssim = kornia.metrics.ssim(t, r, win, max_val=1.0, padding=padding).mean(dim=(1, 2, 3)).tolist()
    assert max(abs(a - b) for a, b in zip(psnr, k_psnr)) < 1e-4, (psnr, k_psnr)
    assert max(abs(a - b) for a, b in zip(ssim, k_ssim)) < 1e-5, (ssim, k_ssim)


def test_metrics_need_no_kornia(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_kornia(name, *a, **k):
        if name == "kornia" or name.startswith("kornia."):
            raise ImportError("No module named 'kornia'")
        return real_import(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_kornia)
    psnr, ssim = cm.frame_metrics(_frames(2), _noisy(_frames(2), 0.03))
    assert len(psnr) == len(ssim) == 2 and all(0.5 < s < 1.0 for s in ssim)