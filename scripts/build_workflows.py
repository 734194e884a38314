#!/usr/bin/env python3
"""Build the bundled example workflows in workflows/ (UI-format litegraph JSON + a .jpg card each).

The graphs are written here in API format (class_type + inputs, the way /prompt takes them) plus
a position per node; they are converted to the UI format the ComfyUI frontend opens with the
input order, widget-vs-socket split and defaults taken from a running server's /object_info, so
the widget values line up with the real node definitions (core and AdaCluster). Nested inputs of
ComfyUI's V3 node API (DynamicCombo, Autogrow, DynamicSlot, MatchType: 0.33's SaveVideo `format`)
are expanded from /object_info the way the frontend (1.49) builds and saves them (`input_slots`).

    .venv/bin/python scripts/build_workflows.py                 # starts a throwaway ComfyUI (.comfyui/)
    .venv/bin/python scripts/build_workflows.py --url http://127.0.0.1:8188   # use a running server
    .venv/bin/python scripts/build_workflows.py --check         # exit 1 if workflows/ is stale
    .venv/bin/python scripts/build_workflows.py --thumbs-only   # only redraw the .jpg cards

The generated files are committed; rerun this after changing a node's inputs. They are generated
against current ComfyUI's node definitions (`ADACLUSTER_COMFYUI=upstream`, the snapshot in
../shared, built by `ADACLUSTER_COMFYUI=upstream bash scripts/setup_env.sh`), and load on 0.3.75 too:
newer nodes only add trailing widgets/outputs (CreateVideo `bit_depth`, SaveVideo's VIDEO output,
SaveVideo's hidden top-level `codec` after the DynamicCombo `format` + `format.codec`, whose values an
older SaveVideo reads as its format and codec), which older frontends ignore;
tests/harness/version_diffs.py lists them and tests/comfy/test_workflows.py checks that against both.

    ADACLUSTER_COMFYUI=upstream .venv-upstream/bin/python scripts/build_workflows.py
The converter (`api_to_ui`) is also used by tests/browser to build the tiny UI graph it queues.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import urllib.request
import uuid
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import doc_facts as facts  # noqa: E402
from adacluster_core.config import AdaClusterConfig  # noqa: E402

WORKFLOWS_DIR = ROOT / "workflows"

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# Node types that exist only in the frontend (never in /object_info).
FRONTEND_ONLY_TYPES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
# Nested / dynamic inputs of ComfyUI's V3 node API (comfy_api/latest/_io.py, e.g. SaveVideo's `format` in
# 0.33): /object_info describes them by these type names, their parts nested in the input's options.
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"   # a combo; each choice brings its own inputs ("<combo>.<input>")
AUTOGROW = "COMFY_AUTOGROW_V3"            # sockets "<group>.<name>" from a template, one more as each is linked
DYNAMIC_SLOT = "COMFY_DYNAMICSLOT_V3"     # a socket; when linked, more inputs "<slot>.<input>"
MATCH_TYPE = "COMFY_MATCHTYPE_V3"         # a socket whose type follows what is linked

# ------------------------------------------------------------------------------------ converter


def _spec_type(spec) -> str:
    """The input's type; a DynamicCombo's own widget is a COMBO (its choices: _combo_choices)."""
    t = spec[0]
    if isinstance(t, list) or t == DYNAMIC_COMBO:
        return "COMBO"
    return str(t)


def _spec_opts(spec) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def _is_widget(spec) -> bool:
    return _spec_type(spec) in WIDGET_TYPES and not _spec_opts(spec).get("forceInput")


def _combo_choices(spec) -> list:
    """A COMBO's choices: the list itself (V1), `options` (V3), or a DynamicCombo's option keys."""
    if isinstance(spec[0], list):
        return spec[0]
    opts = _spec_opts(spec).get("options") or []
    return [o["key"] for o in opts] if spec[0] == DYNAMIC_COMBO else list(opts)


def _default(spec):
    opts = _spec_opts(spec)
    if "default" in opts:
        return opts["default"]
    if _spec_type(spec) == "COMBO":
        choices = _combo_choices(spec)
        return choices[0] if choices else ""
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(_spec_type(spec))


def _has_control(name: str, spec) -> bool:
    """The frontend adds a "control after generate" widget right after this one."""
    return bool(_spec_opts(spec).get("control_after_generate")) or name in ("seed", "noise_seed")


def _inputs_in_order(inputs: dict, order: Optional[dict] = None) -> List[tuple]:
    """(name, spec) of an input dict ({"required": {...}, "optional": {...}}) in the frontend's order."""
    req, opt = inputs.get("required") or {}, inputs.get("optional") or {}
    order = order or {"required": list(req), "optional": list(opt)}
    spec = {**req, **opt}
    return [(n, spec[n]) for n in list(order.get("required", [])) + list(order.get("optional", [])) if n in spec]


def input_slots(oi: dict, choice: Callable[[str, list], Optional[str]] = lambda name, spec: None,
                linked: Callable[[str], bool] = lambda name: False) -> Iterator[tuple]:
    """Every input of a node definition, as (name, spec), in the order the frontend builds them,
    with the nested / dynamic inputs of the V3 API expanded the way frontend 1.49 does:

    - DynamicCombo: the combo itself (a COMBO widget), then the inputs of the chosen option, named
      "<combo>.<input>" (recursively: an option may hold another DynamicCombo). `choice(name, spec)`
      gives the chosen key; it is called lazily, after the combo was yielded (None: the first key).
    - Autogrow: its sockets "<group>.<name>" (template prefix + 0, 1, ... or the template's names):
      at least `min` + 1, and one past the last one that `linked(name)` says is connected.
    - DynamicSlot: the slot (a socket of its slotType), then, when linked, its nested inputs.
    - MatchType and everything else: as it is.
    """
    def walk(name, s):
        t = s[0]
        if t == DYNAMIC_COMBO:
            yield name, s
            key = choice(name, s)
            options = _spec_opts(s).get("options") or []
            opt = next((o for o in options if o.get("key") == key), options[0] if options and key is None else None)
            for sub, ss in _inputs_in_order((opt or {}).get("inputs") or {}):
                yield from walk(f"{name}.{sub}", ss)
        elif t == AUTOGROW:
            tpl = _spec_opts(s).get("template") or {}
            sub = _inputs_in_order(tpl.get("input") or {})
            if not sub:
                return
            sub_name, sub_spec = sub[0]
            names = list(tpl["names"]) if "names" in tpl else [f"{tpl.get('prefix', sub_name)}{i}" for i in range(tpl.get("max", 100))]
            full = [f"{name}.{n}" for n in names]
            last = max((i for i, n in enumerate(full) if linked(n)), default=-1)
            count = min(len(full), max(int(tpl.get("min", 1)) + 1, last + 2))
            for i, n in enumerate(full[:count]):
                yield n, [sub_spec[0], {**_spec_opts(sub_spec), "forceInput": True,
                                        **({"optional": True} if i >= int(tpl.get("min", 1)) else {})}]
        elif t == DYNAMIC_SLOT:
            o = _spec_opts(s)
            yield name, [o.get("slotType", "*"), {k: v for k, v in o.items() if k not in ("inputs", "slotType")}]
            if linked(name):
                for sub, ss in _inputs_in_order(o.get("inputs") or {}):
                    yield from walk(f"{name}.{sub}", ss)
        elif t == MATCH_TYPE:
            yield name, [(_spec_opts(s).get("template") or {}).get("allowed_types", "*"), _spec_opts(s)]
        else:
            yield name, s

    for name, s in _inputs_in_order(oi.get("input") or {}, oi.get("input_order")):
        yield from walk(name, s)


def widget_slots(oi: dict, values: Sequence = ()) -> List[tuple]:
    """The node's serialized widgets in widgets_values order, as (name, spec, kind): kind "value"
    (a real widget), "control" (control after generate, after seeds) or "upload" (LoadImage's
    button). DynamicCombo choices are read from `values` by position (what the frontend does on
    load), the first key where `values` runs out."""
    out: List[tuple] = []

    def choice(name, spec):
        i = next(i for i in range(len(out) - 1, -1, -1) if out[i][0] == name)
        return values[i] if i < len(values) else None

    for name, s in input_slots(oi, choice):
        if not _is_widget(s):
            continue
        out.append((name, s, "value"))
        if _has_control(name, s):
            out.append((name + ":control", None, "control"))
        if _spec_opts(s).get("image_upload"):
            out.append((name + ":upload", None, "upload"))
    return out


def _is_link(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int)


def api_to_ui(prompt: Dict[str, dict], object_info: dict, layout: Optional[Dict[str, dict]] = None,
              extra_nodes: Sequence[dict] = (), groups: Sequence[dict] = (), strict: bool = True) -> dict:
    """API-format prompt -> UI-format workflow (litegraph schema 0.4).

    layout: node id -> {"pos": [x, y], "size": [w, h], "title": str, "color"/"bgcolor": str}.
    extra_nodes: frontend-only nodes (MarkdownNote, Note) as {"type", "text", "pos", "size", "title"}.
    strict: an input name the node does not have raises ValueError (catches drift between this
    script and the node definitions); missing widget values take the node's defaults.
    Nested V3 inputs (input_slots) take their API names: "format.codec" for the `codec` of the
    chosen `format` of a DynamicCombo, "images.image0" for an Autogrow socket.
    """
    layout = layout or {}
    ids = {k: i + 1 for i, k in enumerate(prompt)}
    nodes: List[dict] = []
    links: List[list] = []
    out_links: Dict[tuple, List[int]] = {}
    link_id = 0
    infos = {}
    for order, (k, n) in enumerate(prompt.items()):
        ct = n["class_type"]
        if ct not in object_info:
            raise ValueError(f"node {k}: type {ct!r} is not in /object_info (is the pack loaded?)")
        oi = object_info[ct]
        infos[ids[k]] = oi
        given = n.get("inputs", {})
        slots = list(input_slots(oi, choice=lambda name, s: given.get(name) if not _is_link(given.get(name)) else None,
                                 linked=lambda name: _is_link(given.get(name))))
        names = [name for name, _s in slots]
        unknown = sorted(set(given) - set(names))
        if unknown and strict:
            raise ValueError(f"node {k} ({ct}): unknown input(s) {unknown}; it has {names}")
        inputs, widgets = [], []
        for name, s in slots:
            t = _spec_type(s)
            v = given.get(name)
            if _is_link(v):
                link_id += 1
                src = ids[v[0]]
                if "," in t or t == "*":  # a socket of several types (MatchType, "*"): the link carries the source's
                    src_out = object_info[prompt[v[0]]["class_type"]]["output"]
                    t = src_out[v[1]] if v[1] < len(src_out) else t
                entry = {"name": name, "type": t, "link": link_id}
                if _is_widget(s):
                    entry["widget"] = {"name": name}
                inputs.append(entry)
                links.append([link_id, src, v[1], ids[k], len(inputs) - 1, t])
                out_links.setdefault((src, v[1]), []).append(link_id)
                if _is_widget(s):  # a widget driven by a link keeps a placeholder value
                    widgets.append(_default(s))
                    if _has_control(name, s):
                        widgets.append("fixed")
            elif _is_widget(s):
                widgets.append(_default(s) if v is None else v)
                if _has_control(name, s):
                    widgets.append("fixed")  # the frontend's "control after generate" widget
                if _spec_opts(s).get("image_upload"):
                    widgets.append("image")  # LoadImage's upload button widget
            else:  # an unconnected socket: listed so the node keeps it
                inputs.append({"name": name, "type": t, "link": None})
        lay = layout.get(k, {})
        node = {"id": ids[k], "type": ct,
                "pos": list(lay.get("pos", [40 + 340 * (order % 4), 60 + 320 * (order // 4)])),
                "size": list(lay.get("size", [320, 160])), "flags": {}, "order": order,
                "mode": lay.get("mode", 0), "inputs": inputs, "outputs": [],
                "properties": {"Node name for S&R": ct}, "widgets_values": widgets}
        title = lay.get("title") or n.get("_meta", {}).get("title")
        if title:
            node["title"] = title
        for key in ("color", "bgcolor"):
            if key in lay:
                node[key] = lay[key]
        nodes.append(node)
    for nd in nodes:
        oi = infos[nd["id"]]
        nd["outputs"] = [{"name": nm, "type": t, "links": out_links.get((nd["id"], i), []), "slot_index": i}
                         for i, (nm, t) in enumerate(zip(oi["output_name"], oi["output"]))]
    next_id = len(nodes) + 1
    for extra in extra_nodes:
        nodes.append({"id": next_id, "type": extra.get("type", "MarkdownNote"), "pos": list(extra["pos"]),
                      "size": list(extra.get("size", [400, 300])), "flags": {}, "order": len(nodes), "mode": 0,
                      "inputs": [], "outputs": [], "properties": {}, "widgets_values": [extra["text"]],
                      **({"title": extra["title"]} if extra.get("title") else {}),
                      "color": extra.get("color", "#432"), "bgcolor": extra.get("bgcolor", "#653")})
        next_id += 1
    ui_groups = [{"id": i + 1, "title": g["title"], "bounding": list(g["bounding"]), "color": g.get("color", "#3f789e"),
                  "font_size": 24, "flags": {}} for i, g in enumerate(groups)]
    return {"last_node_id": next_id - 1, "last_link_id": link_id, "nodes": nodes,
            "links": links, "groups": ui_groups, "config": {},
            "extra": {"ds": {"scale": 0.6, "offset": [40, 40]}}, "version": 0.4}


def missing_node_types(workflow: dict, object_info: dict) -> List[str]:
    """Node types a UI workflow uses that the server does not know (frontend-only types excluded)."""
    return sorted({n["type"] for n in workflow.get("nodes", [])} - set(object_info) - FRONTEND_ONLY_TYPES)


# ------------------------------------------------------------------------------------ the graphs

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


def build_one(name: str, object_info: dict) -> dict:
    g = WORKFLOWS[name]()
    P, L = g["prompt"], g["layout"]
    _wire_adacluster(P, L)
    # one group frames the AdaCluster nodes (unless the graph brings its own); the note node sits under the loaders
    groups = g.get("groups") or [{"title": "AdaCluster sparse attention", "bounding": [860, -10, 700, 910], "color": "#3f8e6a"}]
    note_layout = g.get("note_layout") or {"pos": [40, 480], "size": [360, 640]}
    extra = [{"type": "MarkdownNote", "title": "AdaCluster: read me", "text": g["note"], **note_layout}]
    wf = api_to_ui(P, object_info, layout=L, extra_nodes=extra, groups=groups)
    missing = missing_node_types(wf, object_info)
    if missing:
        raise ValueError(f"{name}: node types unknown to the server: {missing}")
    wf = {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, "adacluster-comfyui/workflows/" + name)), "revision": 0, **wf}
    wf["extra"]["adacluster"] = {"generated_by": "scripts/build_workflows.py", "card": list(g["card"])}
    return wf


# ------------------------------------------------------------------------------------ thumbnails


def _font(size: int, bold: bool = False):
    from PIL import ImageFont
    names = (["DejaVuSans-Bold.ttf", "LiberationSans-Bold.ttf"] if bold else ["DejaVuSans.ttf", "LiberationSans-Regular.ttf"])
    for n in names:
        for d in ("/usr/share/fonts/truetype/dejavu/", "/usr/share/fonts/truetype/liberation/", ""):
            try:
                return ImageFont.truetype(d + n, size)
            except OSError:
                continue
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def draw_card(path: Path, title: str, subtitle: str, accent: str, boxes: Optional[Sequence[str]] = None,
              size=(512, 384)) -> None:
    """A small template card: title, subtitle and a diagram of the node chain (`boxes`, the 4th in
    grey) + a sparse block mask."""
    import random

    from PIL import Image, ImageDraw
    W = size[0]
    img = Image.new("RGB", size, "#1c1f24")
    d = ImageDraw.Draw(img)
    d.rectangle([0, 0, W, 6], fill=accent)
    d.text((24, 22), title, font=_font(30, bold=True), fill="#f2f2f2")
    d.text((24, 62), subtitle, font=_font(18), fill="#b8c0cc")
    # node chain
    boxes = list(boxes or ["Thresholds", "Layers", "Sparse Attn", "KSampler", "Stats"])
    x, y, bw, bh, gap = 18, 112, 84, 34, 12
    for i, label in enumerate(boxes):
        fill = accent if i != 3 else "#3a3f48"
        d.rounded_rectangle([x, y, x + bw, y + bh], radius=6, fill=fill, outline="#e6e6e6")
        f = _font(12, bold=True)
        tw = d.textlength(label, font=f)
        d.text((x + (bw - tw) / 2, y + 10), label, font=f, fill="#ffffff")
        if i < len(boxes) - 1:
            d.line([x + bw, y + bh / 2, x + bw + gap, y + bh / 2], fill="#e6e6e6", width=2)
        x += bw + gap
    # block-sparse attention mask: query clusters x key clusters, a few kept per row
    rng = random.Random(title)
    n, cell, ox, oy = 16, 12, 24, 170
    for r in range(n):
        keep = {r} | set(rng.sample(range(n), 4))
        for c in range(n):
            col = accent if c in keep else "#2b3038"
            d.rectangle([ox + c * cell, oy + r * cell, ox + c * cell + cell - 2, oy + r * cell + cell - 2], fill=col)
    f = _font(16)
    d.text((ox + n * cell + 24, oy + 10), "AdaCluster", font=_font(22, bold=True), fill="#f2f2f2")
    for i, line in enumerate(["clustered block-sparse", "self-attention (Triton)", "", "query clusters x key clusters:",
                              "keep top-k per row"]):
        d.text((ox + n * cell + 24, oy + 44 + 20 * i), line, font=f, fill="#b8c0cc")
    img.save(path, "JPEG", quality=85, optimize=True)


# ------------------------------------------------------------------------------------ main


def fetch_object_info(url: str) -> dict:
    with urllib.request.urlopen(url.rstrip("/") + "/object_info", timeout=120) as r:
        return json.loads(r.read())


def object_info_from_throwaway_server() -> dict:
    """/object_info of a throwaway server of the ComfyUI that ADACLUSTER_COMFYUI selects
    (tests/harness/comfy_select.py; the committed files come from `upstream`)."""
    import os
    sys.path.insert(0, str(ROOT))
    from tests.harness.comfy_select import comfy_dir  # dev-only helpers (tests/harness)
    from tests.harness.comfy_server import ComfyServer
    venv = os.environ.get("ADACLUSTER_VENV") or str(ROOT / (".venv-upstream" if os.environ.get(
        "ADACLUSTER_COMFYUI") == "upstream" else ".venv"))
    py = Path(venv) / "bin" / "python"
    with tempfile.TemporaryDirectory(prefix="adacluster_build_wf_") as base:
        srv = ComfyServer(str(py if py.exists() else sys.executable), comfy_dir(), base,
                          custom_nodes={"adacluster": ROOT}, extra_args=[])
        with srv:
            return srv.object_info()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="a running ComfyUI with this pack loaded (default: start a throwaway one)")
    ap.add_argument("--out", default=str(WORKFLOWS_DIR))
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 when a file would change")
    ap.add_argument("--thumbs-only", action="store_true")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.thumbs_only:
        for name, fn in WORKFLOWS.items():
            draw_card(out / f"{name}.jpg", *fn()["card"])
        print("wrote", len(WORKFLOWS), "thumbnails to", out)
        return 0
    info = fetch_object_info(a.url) if a.url else object_info_from_throwaway_server()
    stale = []
    for name in WORKFLOWS:
        if not available(name, info):
            print(f"skipped {name}: this ComfyUI has no {REQUIRES_NODE[name]} (generate against a newer one)")
            continue
        wf = build_one(name, info)
        text = json.dumps(wf, indent=1, ensure_ascii=False) + "\n"
        path = out / f"{name}.json"
        if a.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
            continue
        path.write_text(text, encoding="utf-8")
        draw_card(out / f"{name}.jpg", *wf["extra"]["adacluster"]["card"])
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: "
              f"{len(wf['nodes'])} nodes, {len(wf['links'])} links (+ .jpg)")
    if a.check:
        if stale:
            print("stale (rerun scripts/build_workflows.py):", ", ".join(stale))
            return 1
        print("workflows/ is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
