"""Helpers for the AdaCluster node/patcher tests (test-only).

* `load_nodes_module(name)`: import a module of the pack's `nodes/` package without ComfyUI's
  module loader (the package is registered as `adacluster_pack_nodes`; ComfyUI's own top-level
  `nodes.py` would shadow a plain `import nodes`).
* `comfy_inprocess()`: make the ComfyUI under test (.comfyui/ = 0.3.75 by default) importable in the pytest process, on CPU,
  for synthetic calls through the patcher (real WanModel/HunyuanVideo modules, real ModelPatcher).
* prompt helpers that insert the pack's nodes into the harness prompts and read the Stats node's
  JSON payload back from /history.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from tests.harness.comfy_select import comfy_dir

REPO_ROOT = Path(__file__).resolve().parents[2]
NODES_DIR = REPO_ROOT / "nodes"
COMFY_DIR = comfy_dir()   # the ComfyUI under test (tests/harness/comfy_select.py)
PKG = "adacluster_pack_nodes"

# Thresholds that make the sparse path run on the tiny models (48 video tokens, 2 heads x 128)
# quickly: no warmup, no token minimum, few clusters, the torch reference backend (the Triton
# interpreter costs seconds per call; one test runs it explicitly).
TINY = dict(q_clusters=8, k_clusters=0, k_clusters_init=16, tau_scale=1.5, max_stages=10, stage_iters=3,
            top_k=4, selection="tensorquest", top_p=0.9, kmeans_iters_first=10, kmeans_iters_reuse=2,
            warmup=0.0, dense_layer_fraction=0.0, min_tokens=0, calibration_dense=True, backend="torch",
            max_density=1.0,     # no density budget: top_k alone decides, as the tests assume
            pooled_tail=True)    # the presets' value (the tuner's base config)


def load_nodes_module(name: str):
    if PKG not in sys.modules:
        spec = importlib.util.spec_from_file_location(PKG, NODES_DIR / "__init__.py",
                                                      submodule_search_locations=[str(NODES_DIR)])
        pkg = importlib.util.module_from_spec(spec)
        sys.modules[PKG] = pkg
        spec.loader.exec_module(pkg)
    return importlib.import_module(f"{PKG}.{name}")


def comfy_inprocess() -> str | None:
    """Put the ComfyUI under test on sys.path (CPU mode). Returns None when usable, else why not."""
    if not (COMFY_DIR / "main.py").is_file():
        return f"no ComfyUI at {COMFY_DIR} (run scripts/setup_env.sh)"
    if str(COMFY_DIR) not in sys.path:
        sys.path.append(str(COMFY_DIR))
    try:
        import comfy.cli_args
        comfy.cli_args.args.cpu = True
        import comfy.model_management
        import comfy.patcher_extension
    except Exception as e:  # pragma: no cover
        return f"ComfyUI not importable in-process: {type(e).__name__}: {e}"
    return None


def fill_text(unit, limit: int) -> str:
    """unit(0) + unit(1) + ... while the text stays within `limit` characters (size-bound tests)."""
    out, n, i = [], 0, 0
    while n + len(unit(i)) <= limit:
        out.append(unit(i))
        n += len(unit(i))
        i += 1
    return "".join(out)


def thresholds_node(**overrides) -> tuple:
    vals = dict(TINY)
    vals.update(overrides)
    return ("AdaClusterThresholds", vals)


def patch_chain(preset="auto", enabled=True, config: dict | None = None, rules: str | None = None):
    """A prompt fragment: extra nodes + the AdaClusterSparseAttention spec wired to them.
    Returns (extra_nodes: dict id->node, patch_spec for prompts.video_prompt(patch_nodes=[...]))."""
    extra = {}
    inputs = {"preset": preset, "enabled": enabled}
    if config is not None:
        extra["cfg"] = {"class_type": "AdaClusterThresholds", "inputs": dict(config)}
        inputs["config"] = ["cfg", 0]
    if rules is not None:
        extra["rules"] = {"class_type": "AdaClusterLayerOverrides", "inputs": {"rules": rules}}
        inputs["layer_overrides"] = ["rules", 0]
    return extra, ("AdaClusterSparseAttention", inputs)


def build(builder, *, save_name, preset="auto", enabled=True, config=None, rules=None, stats=True,
          extra_patch=(), **kw) -> dict:
    """Harness prompt with the AdaCluster patch (+ optional Thresholds / Layer Overrides) and a
    Stats node (id "q1") after the sampler."""
    extra, spec = patch_chain(preset, enabled, config, rules)
    post = [("AdaClusterStats", {"model": ["p1", 0]})] if stats else []
    p = builder(patch_nodes=[spec, *extra_patch], save_name=save_name, post_nodes=post, **kw)
    p.update(extra)
    return p


def stats_of(entry: dict, node_id: str = "q1") -> dict:
    out = entry["outputs"][node_id]
    return out["adacluster_stats"][0]


def text_of(entry: dict, node_id: str = "q1") -> str:
    return entry["outputs"][node_id]["text"][0]


def model_facts(path) -> dict:
    """What the ComfyUI under test makes of a checkpoint, read from the model it loads (in this
    process, CPU), so server tests expect what that ComfyUI does rather than what one version did:
      txt_first      HunyuanVideo joint attention order (0.3.75: [img, txt]; upstream: [txt, img])
      spatial_ratio  pixels per latent cell of EmptyHunyuanLatentVideo's latent once the sampler
                     has fitted it to the model (upstream rescales empty latents to the model's
                     VAE ratio: 16 for Wan 2.2-5B / HunyuanVideo 1.5; 0.3.75 keeps 8)
      channels, patch
    """
    import inspect

    why = comfy_inprocess()
    if why:
        raise RuntimeError(why)
    import comfy.sample
    import comfy.sd

    m = comfy.sd.load_diffusion_model(str(path))
    dm, fmt = m.model.diffusion_model, m.model.latent_format
    rescales = "downscale_ratio_spacial" in inspect.signature(comfy.sample.fix_empty_latent_channels).parameters
    blocks = getattr(dm, "double_blocks", None)
    facts = {"txt_first": (not bool(getattr(blocks[0], "flipped_img_txt", False))) if blocks else True,
             "spatial_ratio": int(fmt.spacial_downscale_ratio) if rescales else 8,
             "channels": int(fmt.latent_channels), "patch": tuple(int(p) for p in dm.patch_size)}
    del m, dm
    return facts


def latent_shape(facts: dict, frames: int = 9, size: int = 64) -> list:
    """[B, C, T, H, W] of the harness prompts' sampled latent (EmptyHunyuanLatentVideo, size x size)."""
    s = size // facts["spatial_ratio"]
    return [1, facts["channels"], (frames - 1) // 4 + 1, s, s]


def n_video_tokens(facts: dict, frames: int = 9, size: int = 64) -> int:
    shp = latent_shape(facts, frames, size)[2:]
    n = 1
    for d, p in zip(shp, facts["patch"]):
        n *= -(-d // p)
    return n


def tiny_wan_model(num_layers: int = 2, seed: int = 0):
    """A real ComfyUI WanModel (t2v, 2 heads of 128, dim 256) with small random weights, for
    in-process forwards (needs `comfy_inprocess()` first)."""
    import comfy.ldm.wan.model as W
    import comfy.ops
    import torch

    torch.manual_seed(seed)
    dm = W.WanModel(model_type="t2v", patch_size=(1, 2, 2), text_len=16, in_dim=16, dim=256, ffn_dim=512,
                    freq_dim=256, text_dim=64, out_dim=16, num_heads=2, num_layers=num_layers,
                    operations=comfy.ops.disable_weight_init)
    with torch.no_grad():
        for p_ in dm.parameters():
            p_.normal_(0, 0.05)
    return dm

