"""No input freezes the server (issue 24), against the REAL ComfyUI 0.3.75 server.

Validation (`validate_inputs`) runs on the server's event loop. One prompt carries every pack node
(Sparse Attention, Thresholds, Layer Overrides, Stats, Capture, Compare) with the LARGEST inputs
they accept (rules of MAX_RULES_CHARS, selectors of MAX_SELECTION_CHARS, a 1024-character profile
name, a 200-character capture prefix, every number at its widget maximum); prompts with inputs far
over the bounds (8 MB of valid rules, 2 MB selectors and names) are posted too. Meanwhile a thread
times GET /system_stats every 20 ms: no answer may take more than STALL_LIMIT_S.

The threshold: the old code parsed the whole rule text (8.4 MB of rules blocked /system_stats for
8.5 s), so the 8 MB rules alone would stall it for seconds; a loaded 2-core machine answers in
about 0.5 s at worst here (ComfyUI's own JSON parsing of the 8 MB body takes part of it; the old code: 9.4 s). The pack's own
validation time is bounded more tightly by tests/comfy/test_untrusted_text.py (a few ms).

Every prompt here fails validation on purpose (KSampler steps = 0, a test node's frame = -5), so
nothing executes: the pack nodes are validated as the ancestors of those nodes all the same.
"""
from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

from tests.comfy._helpers import fill_text as _fill, load_nodes_module
from tests.harness import prompts

pytestmark = pytest.mark.server

lr = load_nodes_module("layer_rules")

STALL_LIMIT_S = 3.0


def _post(srv, prompt: dict):
    body = json.dumps({"prompt": prompt, "client_id": str(uuid.uuid4())}).encode()
    req = urllib.request.Request(srv.url + "/prompt", data=body, headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            status, resp = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, resp = e.code, e.read()
    return status, json.loads(resp or b"{}"), len(resp), time.perf_counter() - t0


def _max_numbers(srv, node: str, base: dict) -> dict:
    """`base` with every INT / FLOAT widget of `node` at its maximum (from /object_info)."""
    info = srv.object_info()[node]["input"]
    out = dict(base)
    for sect in ("required", "optional"):
        for name, spec in (info.get(sect) or {}).items():
            if spec and spec[0] in ("INT", "FLOAT") and len(spec) > 1 and "max" in spec[1]:
                out[name] = spec[1]["max"]
    return out


def _all_nodes_prompt(srv, *, rules, profile, probe_layers, probe_steps, cap_layers, cap_steps, prefix) -> dict:
    from tests.comfy._helpers import TINY
    thr = _max_numbers(srv, "AdaClusterThresholds", TINY)
    return {
        "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": prompts.FILENAMES["wan21"],
                                                        "weight_dtype": "default"}},
        "cond": {"class_type": "AdaClusterTestZeroConditioning", "inputs": {"tokens": 16, "width": 4096,
                                                                           "pooled_width": 0}},
        "lat": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 64, "height": 64, "length": 9,
                                                                    "batch_size": 1}},
        "cfg": {"class_type": "AdaClusterThresholds", "inputs": thr},
        "rules": {"class_type": "AdaClusterLayerOverrides", "inputs": {"rules": rules, "profile": profile}},
        "ada": {"class_type": "AdaClusterSparseAttention", "inputs": {
            "model": ["unet", 0], "preset": "auto", "enabled": True, "config": ["cfg", 0],
            "layer_overrides": ["rules", 0], "probe": "on", "probe_layers": probe_layers, "probe_steps": probe_steps}},
        "cap": {"class_type": "AdaClusterCapture", "inputs": {
            "model": ["ada", 0], "enabled": True, "layers": cap_layers, "steps": cap_steps,
            "max_heads": _max_numbers(srv, "AdaClusterCapture", {})["max_heads"],
            "max_mb": _max_numbers(srv, "AdaClusterCapture", {})["max_mb"], "filename_prefix": prefix}},
        "ks": {"class_type": "KSampler", "inputs": {   # steps = 0: invalid, so nothing runs
            "model": ["cap", 0], "seed": 1, "steps": 0, "cfg": 2.0, "sampler_name": "euler", "scheduler": "simple",
            "positive": ["cond", 0], "negative": ["cond", 0], "latent_image": ["lat", 0], "denoise": 1.0}},
        "save": {"class_type": "AdaClusterTestSaveLatent", "inputs": {"samples": ["ks", 0], "name": "limits"}},
        "stats": {"class_type": "AdaClusterStats", "inputs": {"model": ["cap", 0], "samples": ["ks", 0]}},
        "img": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 2, "color": 0}},
        "bad_img": {"class_type": "AdaClusterTestPoisonImage", "inputs": {"image": ["img", 0], "frame": -5,
                                                                          "value": "noise", "whole_frame": False}},
        "cmp": {"class_type": "AdaClusterCompare", "inputs": {"reference": ["img", 0], "test": ["bad_img", 0],
                                                              "diff_gain": 100.0}},
    }


def _largest_accepted():
    M, S = lr.MAX_RULES_CHARS, lr.MAX_SELECTION_CHARS
    sel = "0" + _fill(lambda i: f",{i % 9}-", S - 1)
    return dict(
        rules=_fill(lambda i: f"{i % 40}: top_k={i % 4000 + 1}, tau_scale=1.{i}\n", M),
        profile="p/" * 509 + "x.json",
        probe_layers=sel, probe_steps=sel, cap_layers=sel, cap_steps=sel,
        prefix="a/" * 99 + "bb",
    )


def test_largest_inputs_validate_and_oversized_are_refused_without_stalling(comfy_server):
    srv = comfy_server
    big = _largest_accepted()
    assert len(big["rules"]) <= lr.MAX_RULES_CHARS and len(big["rules"]) > lr.MAX_RULES_CHARS - 64
    assert len(big["probe_layers"]) == lr.MAX_SELECTION_CHARS and len(big["profile"]) == 1024
    assert len(big["prefix"]) == 200
    over = {
        "rules": "0: top_k=8\n" * 750_000 + "0: nonsense=" + "x" * 1000,   # ~8 MB, a bad last line
        "probe_layers": "1," * 1_000_000 + "1",
        "probe_steps": "2-," * 700_000 + "2-",
        "cap_layers": "0," * 1_000_000 + "0",
        "cap_steps": "0-," * 700_000 + "0-",
        "profile": "p/" * 1_000_000 + "x.json",
        "prefix": "a/" * 1_000_000,
    }
    lat: list[tuple[float, float]] = []
    problems: list = []
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            t = time.perf_counter()
            try:
                with urllib.request.urlopen(srv.url + "/system_stats", timeout=30) as r:
                    ok = r.status == 200
            except Exception:
                ok = False
            lat.append((time.perf_counter() - t, ok))
            time.sleep(0.02)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    try:
        time.sleep(0.3)
        # the largest accepted inputs: every pack node validates (only the deliberately bad nodes fail)
        for _ in range(3):
            status, resp, n_resp, dt = _post(srv, _all_nodes_prompt(srv, **big))
            assert status == 400, resp
            bad = set(resp.get("node_errors", {}))
            assert bad <= {"ks", "save", "stats", "bad_img", "cmp"}, json.dumps(resp)[:3000]
            assert "ks" in bad and "bad_img" in bad
            for nid in ("rules", "ada", "cap", "cfg"):
                assert nid not in bad
        # far over the bounds: refused, naming the widget, quoting none of the input (checked after
        # the timing, so that a stall is reported as such)
        for field, value in over.items():
            status, resp, n_resp, dt = _post(srv, _all_nodes_prompt(srv, **dict(big, **{field: value})))
            assert status == 400
            node = {"rules": "rules", "profile": "rules", "probe_layers": "ada", "probe_steps": "ada",
                    "cap_layers": "cap", "cap_steps": "cap", "prefix": "cap"}[field]
            errs = resp.get("node_errors", {}).get(node, {}).get("errors", [])
            if not errs:
                problems.append((field, "not refused"))
            text = json.dumps(errs)
            widget = {"cap_layers": "layers", "cap_steps": "steps", "prefix": "filename_prefix"}.get(field, field)
            if f"{widget}: " not in text:
                problems.append((field, "widget not named", text[:300]))
            if n_resp >= 20_000 or "nonsense" in text or "xxxxxxxxxx" in text:   # the input echoed back
                problems.append((field, "input echoed", n_resp, text[:300]))
    finally:
        time.sleep(0.3)
        stop.set()
        th.join(30)
    assert lat and all(ok for _, ok in lat), lat
    worst = max(t for t, _ in lat)
    print(f"worst /system_stats answer during validation: {worst * 1e3:.0f} ms ({len(lat)} polls)")
    assert worst < STALL_LIMIT_S, f"/system_stats took {worst:.2f} s during validation (limit {STALL_LIMIT_S} s)"
    assert not problems, problems
