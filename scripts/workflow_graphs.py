"""The bundled example workflows of scripts/build_workflows.py, as API-format graphs (class_type +
inputs, the way /prompt takes them) with a layout per node, a read-me note and a card each.

`WORKFLOWS` maps each file name (workflows/<name>.json) to its builder; a builder returns
dict(prompt, layout, note, card[, groups, note_layout]). `REQUIRES_NODE` / `available` say which
workflows need a model family only a newer ComfyUI has. The notes take their presets table and advice
from scripts/doc_facts.py (the code's values; the README is checked against the same).
"""
from __future__ import annotations

import doc_facts as facts
from adacluster_core.config import AdaClusterConfig

WAN_NEGATIVE = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
                "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
                "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")

LAYER_RULES_EXAMPLE = ("# one rule per line: <layers>: dense | sparse | field=value\n"
                       "# keep the first and the last block dense (they matter most for quality)\n"
                       "0, -1: dense\n")

ADACLUSTER_COLOR = {"color": "#2a4a3a", "bgcolor": "#3b6651"}


def adacluster_nodes(top_k: int, model=("shift", 0), **thresholds) -> dict:
    """Thresholds -> (config) and Layer Overrides -> (layer_overrides) -> Sparse Attention; `model`
    (default: node 'shift') is the model to patch, node 'ks' (the sampler) comes from the graph."""
    return {
        "thr": {"class_type": "AdaClusterThresholds",
                "inputs": {"top_k": top_k, "warmup": 0.3, "dense_layer_fraction": 0.15, **thresholds}},
        "rules": {"class_type": "AdaClusterLayerOverrides", "inputs": {"rules": LAYER_RULES_EXAMPLE}},
        "ada": {"class_type": "AdaClusterSparseAttention",
                "inputs": {"model": list(model), "preset": "auto", "enabled": True,
                           "config": ["thr", 0], "layer_overrides": ["rules", 0]}},
    }


def _note(prompt: dict, layout: dict, model_line: str, extra: str = "") -> str:
    """The read-me note of a generation workflow: the presets table, the advice and the reasons
    come from scripts/doc_facts.py (the code's values; the README is checked against the same),
    and the first paragraph says whether the preset widget or the Thresholds node is in charge."""
    return f"""## AdaCluster sparse attention

{model_line}

{facts.in_charge(prompt, layout)}

**Chain:** `AdaCluster Thresholds` → `AdaCluster Layer Overrides` → `AdaCluster Sparse Attention` (patches the MODEL) → sampler → `AdaCluster Stats` (shows what ran sparse and why).

**Presets** (the `preset` widget on Sparse Attention; used only when nothing is connected to its `config`):

{facts.presets_table_markdown()}

**Knobs** (Thresholds)
- **max_density**: token budget per query cluster (0.15 = at most 15 % of the keys computed exactly). The main speed/quality knob.
- {facts.POOLED_TAIL}
- **top_k**: key clusters each query cluster attends to, within the `max_density` budget. Higher = closer to dense, slower; it selects every cluster (dense-equivalent) only with `max_density = 1.0`.
- **top_p** (with selection `top_p`): attention mass to keep (0.9). Higher = closer to dense.
- **warmup**: fraction of the denoising (by sigma, from the start) that runs fully dense. The first steps set the layout of the video: keep them dense.
- **dense_layer_fraction**: share of layers kept dense (those that cluster worst).
- **Layer Overrides**: one rule per line, e.g. `0, -1: dense`, `10-19: top_k=64`, `*: kmeans_iters_reuse=1`.
- **enabled = false** turns the patch off: the same graph then runs plain dense attention (A/B test).

{facts.QUALITY_ADVICE}

{facts.SPEED_ADVICE}

**Stats node:** sparse vs dense calls and the reasons calls stayed dense ({facts.note_reasons_markdown()}, …: the README's troubleshooting table lists them all), {facts.KERNEL_LINE}, density (share of attention actually computed), estimated attention FLOPs saved and attention wall time, and a layers × steps density heatmap.
{extra}"""


def _wan_graph(unet: str, vae: str, prompt: str, latent: dict, latent_layout: dict, steps: int, cfg: float,
               fps: float, prefix: str):
    """The Wan text-to-video graph shared by the Wan workflows: (API prompt, layout)."""
    P = {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": "default"}},
        "clip": {"class_type": "CLIPLoader", "inputs": {"clip_name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "type": "wan", "device": "default"}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": vae}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": prompt}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": WAN_NEGATIVE}},
        "latent": latent,
        "shift": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["unet", 0], "shift": 8.0}},
        **adacluster_nodes(top_k=128),
        "ks": {"class_type": "KSampler", "inputs": {"model": ["ada", 0], "seed": 42, "steps": steps, "cfg": cfg,
                                                     "sampler_name": "uni_pc", "scheduler": "simple",
                                                     "positive": ["pos", 0], "negative": ["neg", 0],
                                                     "latent_image": ["latent", 0], "denoise": 1.0}},
        "stats": {"class_type": "AdaClusterStats", "inputs": {"model": ["ada", 0], "samples": ["ks", 0]}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["vae", 0]}},
        "vid": {"class_type": "CreateVideo", "inputs": {"images": ["dec", 0], "fps": fps}},
        "save": {"class_type": "SaveVideo", "inputs": {"video": ["vid", 0], "filename_prefix": prefix, "format": "auto", "codec": "auto"}},
    }
    L = {
        "unet": {"pos": [40, 60], "size": [340, 90]},
        "clip": {"pos": [40, 190], "size": [340, 110]},
        "vae": {"pos": [40, 340], "size": [340, 60]},
        "pos": {"pos": [420, 60], "size": [420, 180], "title": "Positive prompt", "color": "#232", "bgcolor": "#353"},
        "neg": {"pos": [420, 280], "size": [420, 180], "title": "Negative prompt", "color": "#322", "bgcolor": "#533"},
        "latent": latent_layout,
        "shift": {"pos": [880, 60], "size": [300, 60]},
        "ks": {"pos": [1580, 60], "size": [320, 470]},
        "dec": {"pos": [1580, 580], "size": [220, 50]},
        "vid": {"pos": [1580, 680], "size": [220, 60]},
        "save": {"pos": [1940, 600], "size": [420, 420]},
        "stats": {"pos": [1940, 60], "size": [440, 500]},
    }
    return P, L


def wan21_t2v() -> dict:
    P, L = _wan_graph(
        "wan2.1_t2v_1.3B_fp16.safetensors", "wan_2.1_vae.safetensors",
        "A red fox trotting through fresh snow in a birch forest at sunrise, soft golden light, the camera tracks alongside it, cinematic, highly detailed.",
        {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 832, "height": 480, "length": 81, "batch_size": 1}},
        {"pos": [420, 500], "size": [320, 130], "title": "Empty video latent 832x480, 81 frames"},
        steps=30, cfg=6.0, fps=16.0, prefix="video/wan21_adacluster")
    return dict(prompt=P, layout=L,
                note=_note(P, L, "**Wan 2.1 T2V 1.3B, 480p** (832×480, 81 frames, 30 steps). Put `wan2.1_t2v_1.3B_fp16.safetensors` in `models/diffusion_models`, "
                           "`umt5_xxl_fp8_e4m3fn_scaled.safetensors` in `models/text_encoders`, `wan_2.1_vae.safetensors` in `models/vae`. "
                           "The 14B model (`wan2.1_t2v_14B_fp16.safetensors`) works the same way."),
                card=("Wan 2.1 T2V 1.3B", "480p · 81 frames", "#3b6651"))


def wan22_ti2v_5b() -> dict:
    P, L = _wan_graph(
        "wan2.2_ti2v_5B_fp16.safetensors", "wan2.2_vae.safetensors",
        "A small sailboat crossing a turquoise bay on a windy afternoon, waves sparkling, gulls overhead, aerial drone shot slowly circling the boat.",
        {"class_type": "Wan22ImageToVideoLatent", "inputs": {"vae": ["vae", 0], "width": 1280, "height": 704, "length": 121, "batch_size": 1}},
        {"pos": [420, 500], "size": [320, 170], "title": "Video latent 1280x704, 121 f (I2V: start_image)"},
        steps=20, cfg=5.0, fps=24.0, prefix="video/wan22_5b_adacluster")
    return dict(prompt=P, layout=L,
                note=_note(P, L, "**Wan 2.2 TI2V-5B** (1280×704, 121 frames at 24 fps, 20 steps). Put `wan2.2_ti2v_5B_fp16.safetensors` in `models/diffusion_models`, "
                           "`umt5_xxl_fp8_e4m3fn_scaled.safetensors` in `models/text_encoders`, `wan2.2_vae.safetensors` in `models/vae`. "
                           "Text-to-video as is; for image-to-video connect a `Load Image` to `start_image` of the latent node.",
                           "\n**Wan 2.2 A14B** (high + low noise models, two KSamplerAdvanced): put one `AdaCluster Sparse Attention` on each model; "
                           "warmup is decided on the sigma value, so the split schedule is handled."),
                card=("Wan 2.2 TI2V-5B", "1280x704 · 121 frames", "#3b5a66"))


def hunyuan_t2v_720p() -> dict:
    P = {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": "hunyuan_video_t2v_720p_bf16.safetensors", "weight_dtype": "default"}},
        "clip": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "clip_l.safetensors", "clip_name2": "llava_llama3_fp8_scaled.safetensors", "type": "hunyuan_video", "device": "default"}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "hunyuan_video_vae_bf16.safetensors"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": "A cat walks on the grass in a sunlit garden, realistic style, shallow depth of field, the camera follows at ground level."}},
        "guid": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["pos", 0], "guidance": 6.0}},
        "latent": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 1280, "height": 720, "length": 129, "batch_size": 1}},
        "shift": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["unet", 0], "shift": 7.0}},
        **adacluster_nodes(top_k=94),
        "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": 42}},
        "guider": {"class_type": "BasicGuider", "inputs": {"model": ["ada", 0], "conditioning": ["guid", 0]}},
        "sampler": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "sched": {"class_type": "BasicScheduler", "inputs": {"model": ["ada", 0], "scheduler": "simple", "steps": 30, "denoise": 1.0}},
        "ks": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["sampler", 0],
                                                                  "sigmas": ["sched", 0], "latent_image": ["latent", 0]}},
        "stats": {"class_type": "AdaClusterStats", "inputs": {"model": ["ada", 0], "samples": ["ks", 0]}},
        "dec": {"class_type": "VAEDecodeTiled", "inputs": {"samples": ["ks", 0], "vae": ["vae", 0], "tile_size": 256, "overlap": 64,
                                                           "temporal_size": 64, "temporal_overlap": 8}},
        "vid": {"class_type": "CreateVideo", "inputs": {"images": ["dec", 0], "fps": 24.0}},
        "save": {"class_type": "SaveVideo", "inputs": {"video": ["vid", 0], "filename_prefix": "video/hunyuan_adacluster", "format": "auto", "codec": "auto"}},
    }
    L = {
        "unet": {"pos": [40, 60], "size": [340, 90]},
        "clip": {"pos": [40, 190], "size": [340, 140]},
        "vae": {"pos": [40, 370], "size": [340, 60]},
        "pos": {"pos": [420, 60], "size": [420, 180], "title": "Prompt", "color": "#232", "bgcolor": "#353"},
        "guid": {"pos": [420, 280], "size": [300, 60]},
        "latent": {"pos": [420, 380], "size": [320, 130], "title": "Empty video latent 1280x720, 129 frames"},
        "shift": {"pos": [880, 60], "size": [300, 60]},
        "noise": {"pos": [1580, 60], "size": [300, 90]},
        "guider": {"pos": [1580, 190], "size": [260, 50]},
        "sampler": {"pos": [1580, 280], "size": [260, 60]},
        "sched": {"pos": [1580, 380], "size": [300, 110]},
        "ks": {"pos": [1580, 530], "size": [300, 110]},
        "dec": {"pos": [1580, 680], "size": [300, 150]},
        "vid": {"pos": [1580, 870], "size": [220, 60]},
        "save": {"pos": [1940, 600], "size": [420, 420]},
        "stats": {"pos": [1940, 60], "size": [440, 500]},
    }
    return dict(prompt=P, layout=L,
                note=_note(P, L, "**HunyuanVideo 1.0 T2V, 720p** (1280×720, 129 frames, 30 steps, embedded guidance 6). Put `hunyuan_video_t2v_720p_bf16.safetensors` in "
                           "`models/diffusion_models`, `clip_l.safetensors` and `llava_llama3_fp8_scaled.safetensors` in `models/text_encoders`, "
                           "`hunyuan_video_vae_bf16.safetensors` in `models/vae`. HunyuanVideo 1.5 models work with the same AdaCluster nodes.",
                           "\nHunyuanVideo attends over text + video jointly: only the video-video part is made sparse; the text rows and columns stay dense."),
                card=("HunyuanVideo T2V", "720p · 129 frames", "#5a3b66"))


def _ab_note(prompt: dict, layout: dict) -> str:
    return f"""## A/B check: how far did AdaCluster move the video?

The same prompt, seed (the **Seed** node feeds both samplers), size and length are sampled twice
from one model: **A** with `AdaCluster Sparse Attention` **enabled = false** (plain dense attention,
the reference) and **B** with the AdaCluster **preset** under test. Both are decoded and
**AdaCluster Compare** measures B against A frame by frame.

{facts.in_charge(prompt, layout)}

**Reading the numbers** (`psnr_mean`, `ssim_mean`, the chart, the text):
- **PSNR** in dB, higher = closer to dense. The AdaCluster paper reports **29-31 dB** vs dense at the same seed: at or above that, the sparse video is as close as published results. Identical frames show the cap (100 dB): check that B is enabled.
- **25-29 dB**: watch both videos side by side (fine detail, faces, flicker) before you keep the preset.
- **below ~25 dB**: the run drifted. Set `probe = on` on the B node, run again, and read the worst layers in **AdaCluster Stats**; keep them dense with Layer Overrides (`3, 17: dense`) or follow the tuning advice below.
- **SSIM**: 1 = identical structure; a dip in the chart marks the frames to look at. The **difference** video (|A - B| x diff_gain, black = unchanged) shows where.

**Pick a preset:** run this graph with `preset` = `quality`, `balanced`, `fast` on B (A is cached and not re-sampled) and keep the fastest one whose PSNR you accept; the Compare text (and its `json` output, `sparse_run`) lists the density and FLOPs saved next to the quality, and Stats shows the attention time.

{facts.presets_table_markdown()}

{facts.QUALITY_ADVICE} (Thresholds values: connect an **AdaCluster Thresholds** node to B's `config`; it then replaces the preset.)

{facts.SPEED_ADVICE} Then check the PSNR here again.

PSNR compares pixels of one seed: a few dB between seeds or samplers is normal, so compare presets on the same seed and prompt, ideally on two or three prompts you care about.
"""


def wan21_ab_check() -> dict:
    """Wan 2.1 A/B check: one loader, the same seed and prompt sampled dense (A) and with the
    AdaCluster preset (B), both decoded, compared (AdaCluster Compare) next to the Stats readout."""
    P, L = _wan_graph(
        "wan2.1_t2v_1.3B_fp16.safetensors", "wan_2.1_vae.safetensors",
        "A red fox trotting through fresh snow in a birch forest at sunrise, soft golden light, the camera tracks alongside it, cinematic, highly detailed.",
        {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 832, "height": 480, "length": 81, "batch_size": 1}},
        {"pos": [420, 500], "size": [320, 130], "title": "Empty video latent 832x480, 81 frames"},
        steps=30, cfg=6.0, fps=16.0, prefix="video/ab_check_B_adacluster")
    for k in ("thr", "rules"):  # B runs a preset: the widget to switch between quality / balanced / fast
        P.pop(k)
    P["ada"]["inputs"] = {"model": ["shift", 0], "preset": "auto", "enabled": True}
    P["seed"] = {"class_type": "PrimitiveInt", "inputs": {"value": 42}}
    P["ks"]["inputs"]["seed"] = ["seed", 0]
    P["ada_dense"] = {"class_type": "AdaClusterSparseAttention",
                      "inputs": {"model": ["shift", 0], "preset": "auto", "enabled": False}}
    P["ks_dense"] = {"class_type": "KSampler", "inputs": {**P["ks"]["inputs"], "model": ["ada_dense", 0]}}
    P["dec_dense"] = {"class_type": "VAEDecode", "inputs": {"samples": ["ks_dense", 0], "vae": ["vae", 0]}}
    P["vid_dense"] = {"class_type": "CreateVideo", "inputs": {"images": ["dec_dense", 0], "fps": 16.0}}
    P["save_dense"] = {"class_type": "SaveVideo", "inputs": {"video": ["vid_dense", 0], "filename_prefix": "video/ab_check_A_dense",
                                                             "format": "auto", "codec": "auto"}}
    P["cmp"] = {"class_type": "AdaClusterCompare", "inputs": {"reference": ["dec_dense", 0], "test": ["dec", 0],
                                                              "diff_gain": 8.0, "model": ["ada", 0]}}
    P["vid_diff"] = {"class_type": "CreateVideo", "inputs": {"images": ["cmp", 5], "fps": 16.0}}
    P["save_diff"] = {"class_type": "SaveVideo", "inputs": {"video": ["vid_diff", 0], "filename_prefix": "video/ab_check_difference",
                                                            "format": "auto", "codec": "auto"}}
    A = {"color": "#2a3a4a", "bgcolor": "#3b5166"}
    L.update({
        "shift": {"pos": [420, 680], "size": [320, 60]},
        "seed": {"pos": [420, 790], "size": [320, 90], "title": "Seed (both samplers)"},
        "ada_dense": {"pos": [880, 60], "size": [320, 150], "title": "A: AdaCluster off (dense reference)", **A},
        "ks_dense": {"pos": [1240, 60], "size": [320, 470], "title": "A: KSampler (dense)", **A},
        "dec_dense": {"pos": [1600, 60], "size": [220, 50], "title": "A: VAE Decode"},
        "vid_dense": {"pos": [1600, 160], "size": [220, 60]},
        "save_dense": {"pos": [1860, 60], "size": [360, 420], "title": "A: dense video"},
        "ada": {"pos": [880, 620], "size": [320, 150], "title": "B: AdaCluster preset (under test)"},
        "ks": {"pos": [1240, 620], "size": [320, 470], "title": "B: KSampler (AdaCluster)"},
        "dec": {"pos": [1600, 620], "size": [220, 50], "title": "B: VAE Decode"},
        "vid": {"pos": [1600, 720], "size": [220, 60]},
        "save": {"pos": [1860, 620], "size": [360, 420], "title": "B: AdaCluster video"},
        "cmp": {"pos": [2280, 60], "size": [620, 980], "title": "AdaCluster Compare: B vs A", **ADACLUSTER_COLOR},
        "vid_diff": {"pos": [2960, 60], "size": [220, 60]},
        "save_diff": {"pos": [2960, 260], "size": [360, 420], "title": "|A - B| x diff_gain"},
        "stats": {"pos": [2960, 720], "size": [440, 500], "title": "AdaCluster Stats (B)"},
    })
    groups = [{"title": "A: dense reference (same seed)", "bounding": [860, -10, 1380, 550], "color": "#3f5f8e"},
              {"title": "B: AdaCluster preset", "bounding": [860, 560, 1380, 560], "color": "#3f8e6a"},
              {"title": "Compare B with A", "bounding": [2260, -10, 1160, 1250], "color": "#8e7a3f"}]
    return dict(prompt=P, layout=L, note=_ab_note(P, L), groups=groups, note_layout={"pos": [40, 480], "size": [360, 900]},
                card=("Wan 2.1 A/B check", "dense vs AdaCluster · PSNR / SSIM", "#8e7a3f",
                      ["Dense", "AdaCluster", "Decode", "Compare", "Stats"]))


H3_PROMPT = ("A lighthouse keeper climbs a spiral staircase at dusk, lantern in hand, waves crashing against the rocks "
             "outside, the camera follows from below. Audio: wind howling, footsteps on iron steps, distant surf, a low cello "
             "line.")


def minimax_h3_t2va() -> dict:
    """MiniMax-H3 text-to-video+audio (ComfyUI >= 0.33), the 8-step turbo LoRA as ComfyUI's own H3 template runs it."""
    h3 = AdaClusterConfig.for_model("h3", "balanced")
    P = {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": "minimax_h3_fl2va_pruned_int8_convrot.safetensors",
                                                        "weight_dtype": "default"}},
        "lora": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["unet", 0], "strength_model": 1.0,
                                                                 "lora_name": "minimax_h3_fl2v_turbo_8step_v1.0_comfyui_bf16.safetensors"}},
        "clip": {"class_type": "CLIPLoader", "inputs": {"clip_name": "qwen3vl_32b_minimax_h3_nvfp4_awq.safetensors",
                                                        "type": "minimax", "device": "default"}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "minimax_h3_video_vae_fp16.safetensors"}},
        "avae": {"class_type": "VAELoader", "inputs": {"vae_name": "minimax_h3_audio_vae_fp32.safetensors"}},
        "cond": {"class_type": "MiniMaxH3ImageToVideo", "inputs": {"clip": ["clip", 0], "vae": ["vae", 0], "prompt": H3_PROMPT,
                                                                   "width": 1344, "height": 768, "length": 124}},
        **adacluster_nodes(top_k=h3.top_k, model=("lora", 0), max_density=h3.max_density),
        "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": 42}},
        "guider": {"class_type": "BasicGuider", "inputs": {"model": ["ada", 0], "conditioning": ["cond", 0]}},
        "sampler": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "res_multistep"}},
        "sched": {"class_type": "BasicScheduler", "inputs": {"model": ["ada", 0], "scheduler": "simple", "steps": 8, "denoise": 1.0}},
        "ks": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["sampler", 0],
                                                                  "sigmas": ["sched", 0], "latent_image": ["cond", 1]}},
        "stats": {"class_type": "AdaClusterStats", "inputs": {"model": ["ada", 0], "samples": ["ks", 0]}},
        "dec": {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["vae", 0]}},
        "adec": {"class_type": "VAEDecodeAudio", "inputs": {"samples": ["ks", 0], "vae": ["avae", 0]}},
        "vid": {"class_type": "CreateVideo", "inputs": {"images": ["dec", 0], "audio": ["adec", 0], "fps": 24.0}},
        "save": {"class_type": "SaveVideo", "inputs": {"video": ["vid", 0], "filename_prefix": "video/minimax_h3_adacluster",
                                                       "format": "auto", "codec": "auto"}},
    }
    L = {
        "unet": {"pos": [40, 60], "size": [340, 90]},
        "lora": {"pos": [40, 190], "size": [340, 90], "title": "Turbo LoRA (8 steps)"},
        "clip": {"pos": [40, 320], "size": [340, 110]},
        "vae": {"pos": [40, 470], "size": [340, 60]},
        "avae": {"pos": [40, 570], "size": [340, 60]},
        "cond": {"pos": [440, 60], "size": [400, 420], "title": "Prompt (video + audio), 1344x768, 124 frames (5 s)",
                 "color": "#232", "bgcolor": "#353"},
        "noise": {"pos": [1580, 60], "size": [300, 90]},
        "guider": {"pos": [1580, 190], "size": [260, 50]},
        "sampler": {"pos": [1580, 280], "size": [260, 60]},
        "sched": {"pos": [1580, 380], "size": [300, 110]},
        "ks": {"pos": [1580, 530], "size": [300, 110]},
        "dec": {"pos": [1580, 680], "size": [220, 50]},
        "adec": {"pos": [1580, 770], "size": [220, 50]},
        "vid": {"pos": [1580, 860], "size": [220, 80]},
        "save": {"pos": [1940, 600], "size": [420, 420]},
        "stats": {"pos": [1940, 60], "size": [440, 500]},
    }
    return dict(prompt=P, layout=L,
                note=_note(P, L, "**MiniMax-H3 text-to-video with audio** (ComfyUI 0.33 or newer; 1344×768, 124 frames = 5 s at 24 fps, "
                           "8 steps with the turbo LoRA, as ComfyUI's own H3 template). Put `minimax_h3_fl2va_pruned_int8_convrot.safetensors` in "
                           "`models/diffusion_models`, `qwen3vl_32b_minimax_h3_nvfp4_awq.safetensors` in `models/text_encoders`, "
                           "`minimax_h3_video_vae_fp16.safetensors` and `minimax_h3_audio_vae_fp32.safetensors` in `models/vae`, "
                           "`minimax_h3_fl2v_turbo_8step_v1.0_comfyui_bf16.safetensors` in `models/loras`.",
                           f"\n**H3 specifics.** Only the video rows of H3's packed sequence go sparse; text, keyframe / reference rows and "
                           f"audio stay exact. The Thresholds node here carries H3's `balanced` values (max_density {h3.max_density:g}, "
                           f"top_k {h3.top_k}; H3 has presets of its own, see the README). **8 steps (turbo LoRA):** warmup 0.3 keeps "
                           f"the first 3 steps dense; the last of them also measures the per-layer cluster counts, so steps 4-8 run "
                           f"sparse from the first generation on. **50 steps without the LoRA:** bypass the LoRA node, set the "
                           f"scheduler's steps to 50. Longer clips (up to 15 s: `length` 362) gain most: attention grows with the "
                           f"square of the rows."),
                card=("MiniMax-H3 T2VA", "768p · 5 s · 8-step turbo", "#66553b"),
                note_layout={"pos": [40, 700], "size": [360, 640]})


def _wire_adacluster(P: dict, L: dict) -> None:
    """Lay the AdaCluster nodes out in one column, in the pack's colour."""
    L.setdefault("thr", {"pos": [880, 160], "size": [320, 470]})
    L.setdefault("rules", {"pos": [880, 680], "size": [320, 200]})
    L.setdefault("ada", {"pos": [1220, 60], "size": [320, 150]})
    for k in ("thr", "rules", "ada", "stats"):
        L[k].update(ADACLUSTER_COLOR)


WORKFLOWS = {
    "wan21_t2v_1.3b_480p_adacluster": wan21_t2v,
    "wan22_ti2v_5b_adacluster": wan22_ti2v_5b,
    "hunyuan_video_t2v_720p_adacluster": hunyuan_t2v_720p,
    "wan21_ab_check_adacluster": wan21_ab_check,
    "minimax_h3_t2va_adacluster": minimax_h3_t2va,
}


# workflows for models only a newer ComfyUI has: name -> a core node type that tells (skipped where absent)
REQUIRES_NODE = {"minimax_h3_t2va_adacluster": "MiniMaxH3ImageToVideo"}


def available(name: str, object_info: dict) -> bool:
    """False when the workflow needs a model family this ComfyUI does not have (REQUIRES_NODE)."""
    return REQUIRES_NODE.get(name, next(iter(object_info), "")) in object_info
