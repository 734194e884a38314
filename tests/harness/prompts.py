"""API-format prompt builders for the tiny models (see make_tiny_dits.FILENAMES).

Graph: UNETLoader -> [patch node chain] -> KSampler(zero conditioning, empty latent)
       -> AdaClusterTestSaveLatent (writes $ADACLUSTER_TEST_OUT/<save_name>.pt)
       [-> post nodes fed by the KSampler LATENT, e.g. AdaClusterStats]

`patch_nodes` is a list of (class_type, inputs) inserted between the loader and the KSampler;
each gets its MODEL input wired automatically as `model` (override with `model_input=`).
`post_nodes` is a list of (class_type, inputs) that receive the sampled LATENT as `samples`
(override the input name with a "__latent_input__" key in inputs).

Latents come from EmptyHunyuanLatentVideo (16 channels, 8x spatial, 4x temporal) for every
model: ComfyUI 0.3.75's sampler (comfy.sample.fix_empty_latent_channels) widens an all-zero
latent to the model's channel count (48 for Wan 2.2-5B, 32 for HunyuanVideo 1.5). The core
Wan22ImageToVideoLatent node needs a VAE input, which the tests don't have.
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Sequence, Tuple

from .make_tiny_dits import FILENAMES

PatchSpec = Tuple[str, dict]

# model family -> (latent channels after sampling, text width, pooled width)
FAMILY = {
    "wan21": dict(channels=16, text_width=4096, pooled_width=0),
    "wan22_5b": dict(channels=48, text_width=4096, pooled_width=0),
    "hunyuan": dict(channels=16, text_width=4096, pooled_width=768),
    "hunyuan15": dict(channels=32, text_width=3584, pooled_width=0),
}


def expected_latent_shape(family: str, frames: int = 9, size: int = 64, batch: int = 1) -> List[int]:
    """The shape ComfyUI 0.3.75 samples (8x everywhere); tests take the ComfyUI under test's from
    tests/comfy/_helpers.latent_shape(model_facts)."""
    return [batch, FAMILY[family]["channels"], (frames - 1) // 4 + 1, size // 8, size // 8]


def video_prompt(model_name: str, family: str, patch_nodes: Optional[Sequence[PatchSpec]] = None,
                 steps: int = 2, cfg: float = 2.0, seed: int = 1, frames: int = 9, size: int = 64,
                 save_name: str = "latent", tokens: int = 16, mask_pad: int = 0,
                 sampler_name: str = "euler", scheduler: str = "simple",
                 post_nodes: Optional[Iterable[PatchSpec]] = None, weight_dtype: str = "default") -> dict:
    fam = FAMILY[family]
    p = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": model_name, "weight_dtype": weight_dtype}},
        "3": {"class_type": "AdaClusterTestZeroConditioning",
              "inputs": {"tokens": tokens, "width": fam["text_width"], "pooled_width": fam["pooled_width"],
                         "mask_pad": mask_pad}},
        "4": {"class_type": "EmptyHunyuanLatentVideo",
              "inputs": {"width": size, "height": size, "length": frames, "batch_size": 1}},
    }
    model_ref = ["1", 0]
    for i, (cls, inputs) in enumerate(patch_nodes or ()):
        nid = f"p{i + 1}"
        inputs = dict(inputs)
        key = inputs.pop("model_input", "model")
        inputs[key] = model_ref
        p[nid] = {"class_type": cls, "inputs": inputs}
        model_ref = [nid, 0]
    p["5"] = {"class_type": "KSampler",
              "inputs": {"model": model_ref, "seed": seed, "steps": steps, "cfg": cfg,
                         "sampler_name": sampler_name, "scheduler": scheduler,
                         "positive": ["3", 0], "negative": ["3", 0], "latent_image": ["4", 0],
                         "denoise": 1.0}}
    p["6"] = {"class_type": "AdaClusterTestSaveLatent", "inputs": {"samples": ["5", 0], "name": save_name}}
    for i, (cls, inputs) in enumerate(post_nodes or ()):
        inputs = dict(inputs)
        key = inputs.pop("__latent_input__", "samples")
        inputs[key] = ["5", 0]
        p[f"q{i + 1}"] = {"class_type": cls, "inputs": inputs}
    return p


def wan21_prompt(model_name: str = FILENAMES["wan21"], patch_nodes=None, steps=2, cfg=2.0, seed=1,
                 frames=9, size=64, save_name="wan21", **kw) -> dict:
    return video_prompt(model_name, "wan21", patch_nodes, steps, cfg, seed, frames, size, save_name, **kw)


def wan22_5b_prompt(model_name: str = FILENAMES["wan22_5b"], patch_nodes=None, steps=2, cfg=2.0, seed=1,
                    frames=9, size=64, save_name="wan22_5b", **kw) -> dict:
    return video_prompt(model_name, "wan22_5b", patch_nodes, steps, cfg, seed, frames, size, save_name, **kw)


def hunyuan_prompt(model_name: str = FILENAMES["hunyuan"], patch_nodes=None, steps=2, cfg=2.0, seed=1,
                   frames=9, size=64, save_name="hunyuan", **kw) -> dict:
    return video_prompt(model_name, "hunyuan", patch_nodes, steps, cfg, seed, frames, size, save_name, **kw)


def hunyuan15_prompt(model_name: str = FILENAMES["hunyuan15"], patch_nodes=None, steps=2, cfg=2.0, seed=1,
                     frames=9, size=64, save_name="hunyuan15", **kw) -> dict:
    return video_prompt(model_name, "hunyuan15", patch_nodes, steps, cfg, seed, frames, size, save_name, **kw)


BUILDERS = {"wan21": wan21_prompt, "wan22_5b": wan22_5b_prompt, "hunyuan": hunyuan_prompt,
            "hunyuan15": hunyuan15_prompt}


def h3_prompt(model_name: str = FILENAMES["h3"], patch_nodes=None, steps=3, cfg=1.0, seed=1, task: str = "t2va",
              width=256, height=128, length=39, save_name="h3", post_nodes=None, tokens=16,
              sampler_name="euler", scheduler="simple") -> dict:
    """MiniMax-H3 (ComfyUI >= 0.33): EmptyMiniMaxH3LatentAV (256x128, 39 frames -> video latent
    12 x 8 x 16, grid 12 x 4 x 8 = 384 rows, 65 audio frames = 130 rows) + the test node's task
    conditioning (text width 64 = the tiny model's condition_proj). cfg 1: H3 samples batch 1."""
    p = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": model_name, "weight_dtype": "default"}},
        "3": {"class_type": "AdaClusterTestZeroConditioning",
              "inputs": {"tokens": tokens, "width": 64, "pooled_width": 0, "value": 0.1}},
        "4": {"class_type": "EmptyMiniMaxH3LatentAV", "inputs": {"width": width, "height": height, "length": length}},
        "7": {"class_type": "AdaClusterTestH3Task",
              "inputs": {"conditioning": ["3", 0], "latent": ["4", 0], "task": task, "seed": seed}},
    }
    model_ref = ["1", 0]
    for i, (cls, inputs) in enumerate(patch_nodes or ()):
        nid = f"p{i + 1}"
        inputs = dict(inputs)
        inputs[inputs.pop("model_input", "model")] = model_ref
        p[nid] = {"class_type": cls, "inputs": inputs}
        model_ref = [nid, 0]
    p["5"] = {"class_type": "KSampler",
              "inputs": {"model": model_ref, "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler_name,
                         "scheduler": scheduler, "positive": ["7", 0], "negative": ["7", 0],
                         "latent_image": ["4", 0], "denoise": 1.0}}
    p["6"] = {"class_type": "AdaClusterTestSaveLatent", "inputs": {"samples": ["5", 0], "name": save_name}}
    for i, (cls, inputs) in enumerate(post_nodes or ()):
        inputs = dict(inputs)
        inputs[inputs.pop("__latent_input__", "samples")] = ["5", 0]
        p[f"q{i + 1}"] = {"class_type": cls, "inputs": inputs}
    return p
