"""The bundled example workflows (workflows/*.json + .jpg) against a REAL ComfyUI server (0.3.75 or
the one ADACLUSTER_COMFYUI selects): every node type they use exists in /object_info (zero
missing), /workflow_templates lists each of them under the pack, the server serves the JSON and
the thumbnail, every widget value fits the live node definition, and the files are what
scripts/build_workflows.py generates.

The files are generated against current ComfyUI's node definitions. An older ComfyUI's node may
lack trailing widgets or outputs a newer one added (the frontend assigns widget values by
position and ignores the extra ones): those are the only differences allowed, each listed in
NEWER_WIDGETS / NEWER_OUTPUTS and checked by its own test."""
from __future__ import annotations

import importlib.util
import json

import pytest

from tests.conftest import PACK_NAME, REPO_ROOT
from tests.harness.version_diffs import NEWER_OUTPUTS, newer_trailing_widgets

WORKFLOWS_DIR = REPO_ROOT / "workflows"
SHIPPED = sorted(p.stem for p in WORKFLOWS_DIR.glob("*.json"))
EXPECTED = {"wan21_t2v_1.3b_480p_adacluster", "wan22_ti2v_5b_adacluster", "hunyuan_video_t2v_720p_adacluster",
            "wan21_ab_check_adacluster", "minimax_h3_t2va_adacluster"}
AB_CHECKS = {"wan21_ab_check_adacluster"}  # dense vs preset A/B graphs: their own chain (test below)
MODEL_FILE_WIDGETS = {"unet_name", "clip_name", "clip_name1", "clip_name2", "vae_name", "ckpt_name", "lora_name"}
PACK_NODES = {"AdaClusterSparseAttention", "AdaClusterThresholds", "AdaClusterLayerOverrides", "AdaClusterStats"}


def _build_module():
    spec = importlib.util.spec_from_file_location("adacluster_build_workflows", REPO_ROOT / "scripts" / "build_workflows.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


BW = _build_module()
pytestmark = pytest.mark.per_version   # the files must load in every tested ComfyUI + frontend


def _load(name: str) -> dict:
    return json.loads((WORKFLOWS_DIR / f"{name}.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def object_info(comfy_server):
    return comfy_server.object_info()


def _widget_names(oi: dict, values=()) -> list:
    """The widget slots of a node definition in widgets_values order (control widgets included as
    "<name>:control"; nested V3 widgets as "<combo>.<input>", their choice read from `values`)."""
    return [name for name, _s, _kind in BW.widget_slots(oi, values)]


def _newer_trailing_widgets(node_type: str, object_info: dict, file_values: list) -> list:
    """Widgets of NEWER_WIDGETS this server's node lacks (the file carries them after its own)."""
    if node_type not in object_info:
        return []
    return newer_trailing_widgets(node_type, file_values, len(BW.widget_slots(object_info[node_type], file_values)))


def _differences(committed: dict, fresh: dict, object_info: dict) -> list:
    """What differs between a committed workflow and the one built from this server, other than
    the known newer-node trailing widgets/outputs (which must then be exactly those)."""
    diffs = []
    a, b = dict(committed), dict(fresh)
    na, nb = a.pop("nodes"), b.pop("nodes")
    if a != b:
        diffs.append("top-level fields differ")
    if len(na) != len(nb):
        return diffs + [f"{len(na)} nodes vs {len(nb)}"]
    for x, y in zip(na, nb):
        x, y = dict(x), dict(y)
        t = x.get("type")
        wx, wy = x.pop("widgets_values"), y.pop("widgets_values")
        newer = _newer_trailing_widgets(t, object_info, wx)
        if wx != wy and not (newer and len(wx) == len(wy) + len(newer) and wx[:len(wy)] == wy):
            diffs.append(f"{t}: widgets {wx} vs {wy}")
        ox, oy = x.pop("outputs"), y.pop("outputs")
        have = {o["name"] for o in oy}
        extra = [o["name"] for o in ox if o["name"] not in have]
        if ox != oy and not (extra and extra == [n for n in NEWER_OUTPUTS.get(t, []) if n not in have]
                             and [o for o in ox if o["name"] in have] == oy and not any(
                                 o["links"] for o in ox if o["name"] not in have)):
            diffs.append(f"{t}: outputs {[o['name'] for o in ox]} vs {[o['name'] for o in oy]}")
        if x != y:
            diffs.append(f"{t}: node fields differ")
    return diffs


# ------------------------------------------------------------------------------- offline checks

def test_expected_workflows_are_bundled_with_thumbnails():
    assert EXPECTED <= set(SHIPPED), f"missing bundled workflows: {sorted(EXPECTED - set(SHIPPED))}"
    for name in SHIPPED:
        jpg = WORKFLOWS_DIR / f"{name}.jpg"
        assert jpg.is_file(), f"{name}.json has no same-name .jpg thumbnail"
        assert jpg.read_bytes()[:3] == b"\xff\xd8\xff", f"{jpg.name} is not a JPEG"
        assert jpg.stat().st_size < 200_000, f"{jpg.name} is {jpg.stat().st_size} bytes"


@pytest.mark.parametrize("name", SHIPPED)
def test_workflow_is_ui_format_with_the_adacluster_chain_and_a_note(name):
    wf = _load(name)
    assert wf.get("version") == 0.4 and isinstance(wf.get("nodes"), list) and "links" in wf
    types = [n["type"] for n in wf["nodes"]]
    pack_nodes = {"AdaClusterSparseAttention", "AdaClusterStats", "AdaClusterCompare"} if name in AB_CHECKS else PACK_NODES
    assert pack_nodes <= set(types), f"{name}: lacks {sorted(pack_nodes - set(types))}"
    assert {"UNETLoader", "VAELoader"} <= set(types)
    assert {"CLIPLoader", "DualCLIPLoader"} & set(types)
    notes = [n for n in wf["nodes"] if n["type"] in ("MarkdownNote", "Note")]
    assert notes, f"{name}: no note node explaining the knobs"
    text = notes[0]["widgets_values"][0]
    for word in ("top_k", "warmup", "preset", "Quality dropped", "speed"):
        assert word in text, f"{name}: the note does not mention {word!r}"
    by_id = {n["id"]: n for n in wf["nodes"]}
    ids = set(by_id)
    link_ids = set()
    for link in wf["links"]:
        lid, src, src_slot, dst, dst_slot, _t = link
        assert src in ids and dst in ids, f"{name}: link {lid} joins unknown nodes"
        assert by_id[dst]["inputs"][dst_slot]["link"] == lid, f"{name}: link {lid} is not on its target input"
        assert lid in by_id[src]["outputs"][src_slot]["links"], f"{name}: link {lid} is not on its source output"
        link_ids.add(lid)
    assert len(link_ids) == len(wf["links"]) and wf["last_link_id"] >= max(link_ids)
    assert wf["last_node_id"] >= max(ids)

    # The AdaCluster chain: Thresholds -> config, Layer Overrides -> layer_overrides of Sparse
    # Attention, whose MODEL feeds the sampler and the Stats node; Stats runs after sampling.
    def src_type(node, input_name):
        inp = next(i for i in node["inputs"] if i["name"] == input_name)
        link = next(lk for lk in wf["links"] if lk[0] == inp["link"])
        return by_id[link[1]]["type"]

    if name in AB_CHECKS:
        return  # test_ab_check_workflow_compares_dense_with_the_preset
    ada = next(n for n in wf["nodes"] if n["type"] == "AdaClusterSparseAttention")
    stats = next(n for n in wf["nodes"] if n["type"] == "AdaClusterStats")
    assert src_type(ada, "config") == "AdaClusterThresholds"
    assert src_type(ada, "layer_overrides") == "AdaClusterLayerOverrides"
    assert src_type(stats, "model") == "AdaClusterSparseAttention"
    assert src_type(stats, "samples") in ("KSampler", "KSamplerAdvanced", "SamplerCustomAdvanced")


@pytest.mark.parametrize("name", sorted(AB_CHECKS))
def test_ab_check_workflow_compares_dense_with_the_preset(name):
    """One model loader and one latent; one seed node feeding both samplers; sampler A's model is
    AdaCluster with enabled = false, sampler B's the preset; A's and B's decoded frames go to Compare
    as reference / test; Stats reads B; the note explains how to read the numbers."""
    wf = _load(name)
    by_id = {n["id"]: n for n in wf["nodes"]}
    links = {lk[0]: lk for lk in wf["links"]}

    def src(node, input_name):
        inp = next(i for i in node["inputs"] if i["name"] == input_name)
        assert inp["link"] is not None, f"{name}: {node['type']}.{input_name} is not connected"
        return by_id[links[inp["link"]][1]]

    types = [n["type"] for n in wf["nodes"]]
    assert types.count("UNETLoader") == 1 and types.count("KSampler") == 2 and types.count("VAEDecode") == 2
    cmp_node = next(n for n in wf["nodes"] if n["type"] == "AdaClusterCompare")
    ref_dec, test_dec = src(cmp_node, "reference"), src(cmp_node, "test")
    assert ref_dec["type"] == test_dec["type"] == "VAEDecode" and ref_dec["id"] != test_dec["id"]
    ks_a, ks_b = src(ref_dec, "samples"), src(test_dec, "samples")
    ada_a, ada_b = src(ks_a, "model"), src(ks_b, "model")
    assert ada_a["type"] == ada_b["type"] == "AdaClusterSparseAttention"
    # AdaClusterSparseAttention widgets: preset, enabled (+ probe widgets of newer versions)
    assert ada_a["widgets_values"][1] is False and ada_b["widgets_values"][1] is True
    assert src(ada_a, "model")["id"] == src(ada_b, "model")["id"], "A and B must sample the same model"
    assert src(ks_a, "latent_image")["id"] == src(ks_b, "latent_image")["id"]
    assert src(ks_a, "positive")["id"] == src(ks_b, "positive")["id"]
    seed_a, seed_b = src(ks_a, "seed"), src(ks_b, "seed")
    assert seed_a["id"] == seed_b["id"] and seed_a["type"] == "PrimitiveInt", "one seed node must drive both samplers"
    assert ks_a["widgets_values"][2:] == ks_b["widgets_values"][2:], "A and B sampler settings differ"
    assert src(cmp_node, "model")["id"] == ada_b["id"]
    stats = next(n for n in wf["nodes"] if n["type"] == "AdaClusterStats")
    assert src(stats, "model")["id"] == ada_b["id"] and src(stats, "samples")["id"] == ks_b["id"]
    note = next(n for n in wf["nodes"] if n["type"] == "MarkdownNote")["widgets_values"][0]
    for words in ("29-31 dB", "25 dB", "probe", "worst layers", "enabled = false", "Pick a preset"):
        assert words in note, f"{name}: the note does not mention {words!r}"


def _v3_node(inputs: dict, order: dict) -> dict:
    return {"input": inputs, "input_order": order, "output": ["IMAGE"], "output_name": ["IMAGE"]}


# How ComfyUI's V3 API (comfy_api/latest/_io.py, 0.33) serialises nested inputs in /object_info.
V3_TEST_NODE = _v3_node({
    "required": {
        "mode": ["COMFY_DYNAMICCOMBO_V3", {"options": [
            {"key": "plain", "inputs": {"required": {}}},
            {"key": "fancy", "inputs": {"required": {"strength": ["FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0}],
                                                      "sub": ["COMFY_DYNAMICCOMBO_V3", {"options": [
                                                          {"key": "a", "inputs": {"required": {}}},
                                                          {"key": "b", "inputs": {"required": {"n": ["INT", {"default": 3}]}}}]}]},
                                         "optional": {"mask": ["MASK", {}]}}}]}],
        "images": ["COMFY_AUTOGROW_V3", {"template": {"input": {"required": {"image": ["IMAGE", {}]}}, "prefix": "image",
                                                      "min": 1, "max": 5}}],
        "seed": ["INT", {"default": 0, "control_after_generate": True}],
    },
    "optional": {"other": ["COMFY_MATCHTYPE_V3", {"template": {"template_id": "t", "allowed_types": "IMAGE,MASK"}}],
                 "slot": ["COMFY_DYNAMICSLOT_V3", {"slotType": "LATENT", "inputs": {"required": {"k": ["INT", {"default": 1}]}},
                                                   "forceInput": True}]},
}, {"required": ["mode", "images", "seed"], "optional": ["other", "slot"]})


def test_nested_v3_inputs_expand_like_the_frontend():
    """DynamicCombo: the combo, then the chosen option's inputs "<combo>.<input>" (recursively);
    Autogrow: sockets "<group>.<prefix>N", min + 1 and one past the last linked; DynamicSlot: the
    slot, its inputs when linked; MatchType: a socket. Widget values follow the chosen options."""
    node = V3_TEST_NODE
    assert [n for n, _s, _k in BW.widget_slots(node)] == ["mode", "seed", "seed:control"]
    assert [n for n, _s, _k in BW.widget_slots(node, ["fancy", 0.7, "b", 4, 1, "fixed"])] == [
        "mode", "mode.strength", "mode.sub", "mode.sub.n", "seed", "seed:control"]
    prompt = {"src": {"class_type": "Src", "inputs": {}},
              "x": {"class_type": "V3", "inputs": {"mode": "fancy", "mode.strength": 0.25, "mode.sub": "b",
                                                   "mode.mask": ["src", 1], "images.image0": ["src", 0],
                                                   "images.image1": ["src", 0], "other": ["src", 1],
                                                   "slot": ["src", 2], "slot.k": 7, "seed": 5}}}
    info = {"Src": {"input": {}, "output": ["IMAGE", "MASK", "LATENT"], "output_name": ["IMAGE", "MASK", "LATENT"]},
            "V3": node}
    wf = BW.api_to_ui(prompt, info)
    x = wf["nodes"][1]
    assert x["widgets_values"] == ["fancy", 0.25, "b", 3, 5, "fixed", 7]
    assert [(i["name"], i["type"], i["link"] is not None) for i in x["inputs"]] == [
        ("mode.mask", "MASK", True), ("images.image0", "IMAGE", True), ("images.image1", "IMAGE", True),
        ("images.image2", "IMAGE", False), ("other", "MASK", True), ("slot", "LATENT", True)]
    with pytest.raises(ValueError, match="unknown input"):   # an input of an option that is not chosen
        BW.api_to_ui({"x": {"class_type": "V3", "inputs": {"mode": "plain", "mode.strength": 0.3}}}, info)


# ------------------------------------------------------------------------------- server checks

@pytest.mark.server
@pytest.mark.parametrize("name", SHIPPED)
def test_workflow_uses_only_node_types_the_server_has(object_info, name):
    wf = _load(name)
    missing = BW.missing_node_types(wf, object_info)
    if not BW.available(name, object_info):   # a model family this ComfyUI lacks: only its own nodes may miss
        assert BW.REQUIRES_NODE[name] in missing and not [m for m in missing if m.startswith("AdaCluster")], missing
        pytest.skip(f"{name} needs {BW.REQUIRES_NODE[name]}, which this ComfyUI does not have")
    assert missing == [], f"{name}.json uses node types this ComfyUI lacks: {missing}"
    frontend_only = {n["type"] for n in wf["nodes"]} - set(object_info)
    assert frontend_only <= BW.FRONTEND_ONLY_TYPES


@pytest.mark.server
@pytest.mark.parametrize("name", SHIPPED)
def test_widget_values_fit_the_live_node_definitions(object_info, name):
    """Rebuild each node's widget list from /object_info and check count, types and combo/range
    validity (model file combos excepted: the test server has no such files)."""
    if not BW.available(name, object_info):
        pytest.skip(f"{name} needs {BW.REQUIRES_NODE[name]}, which this ComfyUI does not have")
    wf = _load(name)
    for node in wf["nodes"]:
        if node["type"] in BW.FRONTEND_ONLY_TYPES:
            continue
        vals = node["widgets_values"]
        # an older ComfyUI's node lacks widgets a newer one added: the file's extra trailing values
        # are exactly those (the frontend assigns by position and ignores the rest)
        vals = vals[:len(vals) - len(_newer_trailing_widgets(node["type"], object_info, vals))]
        # (name, spec, kind) per widget slot, nested V3 widgets (DynamicCombo) as the frontend builds
        # them from the chosen values
        expected = BW.widget_slots(object_info[node["type"]], vals)
        assert len(vals) == len(expected), (f"{name}: {node['type']} has {len(vals)} widget values, "
                                            f"the node has {[e[0] for e in expected]}")
        for (wname, s, kind), v in zip(expected, vals):
            where = f"{name}: {node['type']}.{wname}={v!r}"
            if kind == "control":
                assert v in ("fixed", "increment", "decrement", "randomize"), where
                continue
            if kind == "upload":
                assert v == "image", where
                continue
            t, opts = BW._spec_type(s), BW._spec_opts(s)
            if t == "INT":
                assert isinstance(v, int) and not isinstance(v, bool), where
            elif t == "FLOAT":
                assert isinstance(v, (int, float)) and not isinstance(v, bool), where
            elif t == "BOOLEAN":
                assert isinstance(v, bool), where
            elif t == "STRING":
                assert isinstance(v, str), where
            elif t == "COMBO":
                choices = BW._combo_choices(s)
                if wname in MODEL_FILE_WIDGETS:  # the test server has only the tiny models
                    assert isinstance(v, str) and v.endswith(".safetensors"), where
                else:
                    assert v in choices, f"{where} not in {choices[:12]}"
            if t in ("INT", "FLOAT"):
                if "min" in opts:
                    assert v >= opts["min"], where
                if "max" in opts:
                    assert v <= opts["max"], where


@pytest.mark.server
def test_workflow_templates_endpoint_lists_and_serves_every_workflow(comfy_server):
    templates = comfy_server.get("/workflow_templates")
    assert PACK_NAME in templates, f"/workflow_templates has no '{PACK_NAME}' entry: {templates}"
    assert sorted(templates[PACK_NAME]) == SHIPPED
    for name in SHIPPED:
        # The frontend fetches exactly these two URLs (GraphView: fetchTemplateJson / thumbnail).
        body = comfy_server.get(f"/api/workflow_templates/{PACK_NAME}/{name}.json")
        wf = json.loads(body) if isinstance(body, (bytes, str)) else body
        assert wf == _load(name)
        jpg = comfy_server.get(f"/api/workflow_templates/{PACK_NAME}/{name}.jpg")
        assert isinstance(jpg, bytes) and jpg[:3] == b"\xff\xd8\xff"


@pytest.mark.server
def test_bundled_workflows_are_up_to_date(object_info):
    """workflows/*.json == what scripts/build_workflows.py generates from this server's /object_info
    (a node input renamed or added without rerunning the script fails here), up to the known
    trailing widgets/outputs of newer nodes when this ComfyUI's nodes lack them."""
    for name in [n for n in BW.WORKFLOWS if BW.available(n, object_info)]:
        fresh = json.loads(json.dumps(BW.build_one(name, object_info), ensure_ascii=False))
        diffs = _differences(_load(name), fresh, object_info)
        assert diffs == [], (f"workflows/{name}.json is stale ({'; '.join(diffs)}): run "
                             "ADACLUSTER_COMFYUI=upstream .venv-upstream/bin/python scripts/build_workflows.py")


@pytest.mark.server
def test_createvideo_bit_depth_is_in_the_files_whatever_this_comfyui_has(object_info):
    """Known difference: CreateVideo has an (optional) `bit_depth` widget in current ComfyUI, not in
    0.3.75. The files carry it (8, the default) right after fps; where the server has it, it is a
    real widget with that value in range."""
    has = "bit_depth" in _widget_names(object_info["CreateVideo"])
    for name in SHIPPED:
        for node in (n for n in _load(name)["nodes"] if n["type"] == "CreateVideo"):
            assert len(node["widgets_values"]) == 2 and node["widgets_values"][1] == 8, node["widgets_values"]
            if has:
                spec = object_info["CreateVideo"]["input"]["optional"]["bit_depth"]
                assert spec[1]["min"] <= 8 <= spec[1]["max"]
            else:
                assert _newer_trailing_widgets("CreateVideo", object_info, node["widgets_values"]) == ["bit_depth"]


@pytest.mark.server
def test_savevideo_output_is_in_the_files_whatever_this_comfyui_has(object_info):
    """Known difference: SaveVideo returns its VIDEO in current ComfyUI (0.3.75: no outputs). The
    files list that output, unlinked, so it loads on both."""
    outs = object_info["SaveVideo"]["output"]
    for name in SHIPPED:
        for node in (n for n in _load(name)["nodes"] if n["type"] == "SaveVideo"):
            assert [o["name"] for o in node["outputs"]] == ["video"] and node["outputs"][0]["links"] == []
            assert outs in ([], ["VIDEO"]), outs


@pytest.mark.server
def test_savevideo_format_is_in_the_files_whatever_this_comfyui_has(object_info):
    """Known difference: SaveVideo's `format` is a nested V3 DynamicCombo in current ComfyUI (0.33:
    format, then the chosen format's `format.codec`, then the old top-level `codec`, hidden); 0.3.75
    has two plain combos, format and codec. The files carry current ComfyUI's four values; an older
    frontend gives its `codec` the third (format.codec) and ignores the fourth."""
    live = _widget_names(object_info["SaveVideo"], ["", "auto", "auto", "auto"])
    dynamic = object_info["SaveVideo"]["input"]["required"]["format"][0] == BW.DYNAMIC_COMBO
    assert live == (["filename_prefix", "format", "format.codec", "codec"] if dynamic
                    else ["filename_prefix", "format", "codec"]), live
    for name in SHIPPED:
        for node in (n for n in _load(name)["nodes"] if n["type"] == "SaveVideo"):
            vals = node["widgets_values"]
            assert len(vals) == 4 and vals[1:] == ["auto", "auto", "auto"], vals
            assert _newer_trailing_widgets("SaveVideo", object_info, vals) == ([] if dynamic else ["codec"])


@pytest.mark.server
def test_web_extension_is_served(comfy_server):
    exts = comfy_server.get("/extensions")
    ours = [e for e in exts if e.startswith(f"/extensions/{PACK_NAME}/")]
    assert f"/extensions/{PACK_NAME}/adacluster.js" in ours, exts
    js = comfy_server.get(f"/extensions/{PACK_NAME}/adacluster.js")
    js = js.decode() if isinstance(js, bytes) else js
    assert "registerExtension" in js and "AdaClusterStats" in js
