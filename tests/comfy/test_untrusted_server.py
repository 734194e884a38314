"""Shared workflows are untrusted input (issue 13), against the REAL ComfyUI 0.3.75 server:

* Layer Overrides' `profile` reads only regular files (<= 1 MiB) inside output/ and input/; a path
  outside, a symlink out, a FIFO and /dev/zero are refused quickly with ONE message that does not
  tell whether the path exists, and the server keeps answering /system_stats.
* out-of-range widget values are rejected at validation (POST /prompt), naming the widget: ComfyUI's
  own range / choice checks stay on (no `validate_inputs(**kwargs)` on any pack node).
* an in-range but slow sparse call stops on POST /interrupt within seconds (the core checks
  ComfyUI's interrupt between k-means iterations).
* backend=auto without Triton runs dense through ComfyUI's attention, and Stats says so.
"""
from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

from tests.comfy._helpers import TINY, build, stats_of, text_of
from tests.harness import prompts

pytestmark = pytest.mark.server


def _post_prompt(srv, prompt: dict):
    """POST /prompt -> (http status, JSON body)."""
    req = urllib.request.Request(srv.url + "/prompt", data=json.dumps({"prompt": prompt, "client_id": str(uuid.uuid4())}).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _rejected_inputs(srv, prompt: dict, node_id: str) -> dict:
    """input name -> error text of a prompt that validation must reject at `node_id`."""
    status, body = _post_prompt(srv, prompt)
    assert status == 400, f"expected a validation error, got {status}: {json.dumps(body)[:800]}"
    errs = body.get("node_errors", {}).get(node_id, {}).get("errors", [])
    assert errs, f"no error on node {node_id}: {json.dumps(body)[:2000]}"
    return {e.get("extra_info", {}).get("input_name"): f"{e.get('message')}: {e.get('details')}" for e in errs}


def _assert_names_widget(bad: dict, field: str, custom: set):
    """Rejected for `field`: every error message names it, and errors are reported only against
    `field` or the inputs the node validates itself (ComfyUI reports a failed validate_inputs
    against each input it names; nodes/validation.py)."""
    assert field in bad, bad
    assert all(field in m for m in bad.values()), bad
    assert set(bad) <= {field} | custom, bad


def _system_stats_ok(srv, timeout=5.0) -> bool:
    with urllib.request.urlopen(srv.url + "/system_stats", timeout=timeout) as r:
        return r.status == 200


# ------------------------------------------------------------------------------------- profile paths
def _profile_prompt(profile: str, save_name: str) -> dict:
    p = build(prompts.wan21_prompt, save_name=save_name, config=TINY, rules="# none\n", steps=1, stats=False)
    p["rules"]["inputs"]["profile"] = profile
    return p


def _profile_error(srv, profile: str, save_name: str) -> tuple[str, float]:
    """(the execution error's exception message, seconds until the prompt failed)."""
    t0 = time.time()
    pid = srv.queue_prompt(_profile_prompt(profile, save_name))
    while time.time() - t0 < 120:
        h = srv.get(f"/history/{pid}")
        if pid in h:
            break
        time.sleep(0.1)
    dt = time.time() - t0
    st = h[pid]["status"]
    assert st.get("status_str") == "error", st
    errs = [m[1] for m in st.get("messages", []) if m[0] == "execution_error"]
    assert errs and errs[0].get("node_id") == "rules", errs
    return errs[0]["exception_message"], dt


def test_profile_outside_fifo_devzero_refused_without_revealing_existence(comfy_server, tmp_path):
    srv = comfy_server
    out = srv.base_dir / "output"
    secret = tmp_path / "secret.json"          # exists, valid profile JSON, outside output/ and input/
    secret.write_text(json.dumps({"format": "adacluster-profile/1", "layers": {"0": {"mode": "dense"}}}))
    (out / "escape.json").unlink(missing_ok=True)
    os.symlink(secret, out / "escape.json")    # a symlink inside output/ that points outside
    fifo = out / "fifo.json"
    if not fifo.exists():
        os.mkfifo(fifo)
    cases = {
        "existing outside": str(secret),
        "missing outside": str(tmp_path / "nope.json"),
        "dotdot": "../" * 12 + str(secret).lstrip("/"),
        "home": "~/.bashrc",
        "symlink out": "escape.json",
        "fifo": "fifo.json",
        "dev zero": "/dev/zero",
    }
    stats_answers = []
    stop = threading.Event()

    def poll():   # the HTTP server must keep answering while the prompts run
        while not stop.is_set():
            t = time.time()
            try:
                stats_answers.append((_system_stats_ok(srv, timeout=5.0), time.time() - t))
            except Exception:
                stats_answers.append((False, time.time() - t))
            time.sleep(0.2)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    try:
        msgs = {}
        for name, path in cases.items():
            msg, dt = _profile_error(srv, path, f"prof_{name.replace(' ', '_')}")
            assert dt < 60, f"{name}: took {dt:.1f} s"
            assert "no readable profile of that name" in msg, (name, msg)
            for leak in ("No such file", "Errno", "Expecting value", "Permission", "MemoryError", "secret",
                         os.path.expanduser("~") + "/", str(out)):
                if leak not in path:
                    assert leak not in msg, (name, leak, msg)
            msgs[name] = msg.replace(repr(path), "<P>")
    finally:
        stop.set()
        th.join(10)
    # one message whatever the path: existence does not show
    assert len(set(msgs.values())) == 1, msgs
    assert stats_answers and all(ok for ok, _ in stats_answers), stats_answers
    assert max(dt for _, dt in stats_answers) < 5.0
    # a valid profile inside output/ still loads
    good = out / "good_profile.json"
    good.write_text(json.dumps({"format": "adacluster-profile/1", "layers": {"0": {"mode": "dense"}}}))
    srv.run_prompt(_profile_prompt("good_profile.json", "prof_good"), timeout=300)


def test_oversized_profile_refused(comfy_server):
    big = comfy_server.base_dir / "output" / "big_profile.json"
    big.write_text(json.dumps({"format": "adacluster-profile/1", "layers": {}, "pad": "x" * (1 << 20)}))
    msg, dt = _profile_error(comfy_server, "big_profile.json", "prof_big")
    assert "no readable profile of that name" in msg and dt < 60


# ------------------------------------------------------------------------------------- widget bounds
@pytest.mark.parametrize("field,value", [
    ("kmeans_iters_first", 10**9), ("kmeans_iters_first", 5000), ("kmeans_iters_reuse", 10**6),
    ("q_clusters", 10**7), ("top_k", 10**9), ("stage_iters", 10**6), ("max_stages", 10**6),
    ("k_clusters_init", 10**7), ("tau_scale", 1e-300), ("selection", "nearest"), ("backend", "cuda"),
])
def test_thresholds_out_of_range_rejected_naming_the_widget(comfy_server, field, value):
    p = build(prompts.wan21_prompt, save_name="oob", config=dict(TINY, **{field: value}), steps=1)
    bad = _rejected_inputs(comfy_server, p, "cfg")
    # numeric widgets: ComfyUI's own range check, on that widget only (not every widget of the node)
    _assert_names_widget(bad, field, {"selection", "backend"} if field in ("selection", "backend") else set())


def test_other_nodes_out_of_range_rejected_naming_the_widget(comfy_server):
    srv = comfy_server
    sa_custom = {"preset", "probe", "probe_layers", "probe_steps"}
    p = build(prompts.wan21_prompt, save_name="oob_preset", preset="ultra", steps=1)
    _assert_names_widget(_rejected_inputs(srv, p, "p1"), "preset", sa_custom)
    p["p1"]["inputs"].update(preset="auto", probe_steps="2-x")
    _assert_names_widget(_rejected_inputs(srv, p, "p1"), "probe_steps", sa_custom)
    cap_custom = {"layers", "steps", "filename_prefix"}
    for field, value in (("max_mb", 1e12), ("max_mb", -5.0), ("max_heads", -3), ("max_heads", 10**6),
                         ("filename_prefix", "x" * 300), ("steps", "0-q")):
        cap = ("AdaClusterCapture", {"enabled": True, "layers": "*", "steps": "*", "max_heads": 2, "max_mb": 8.0,
                                     "filename_prefix": "oob/x", field: value})
        p = prompts.wan21_prompt(patch_nodes=[cap], steps=1, save_name="oob_cap")
        bad = _rejected_inputs(srv, p, "p1")
        _assert_names_widget(bad, field, cap_custom)
        if field in ("max_mb", "max_heads"):
            assert set(bad) == {field}, bad
    # a rule cannot smuggle an unbounded knob in either
    p = build(prompts.wan21_prompt, save_name="oob_rule", config=TINY, rules="*: kmeans_iters_first=1000000000",
              steps=1)
    bad = _rejected_inputs(srv, p, "rules")
    assert "kmeans_iters_first must be in [1, 100]" in json.dumps(bad), bad


# ------------------------------------------------------------------------------------- interrupt
def test_interrupt_stops_a_slow_sparse_call_within_seconds(comfy_server):
    """One sampling step whose every attention call runs 100 k-means iterations with 3,072 clusters
    over 3,072 tokens (in range: every value within its widget bounds): on the CPU one iteration
    takes ~0.9 s (measured), one call ~3 minutes, far longer than the 15 s allowed here, so
    stopping in time needs the check between
    iterations (ComfyUI's sampler itself only checks between steps). A Capture node after the patch
    writes what it got, marked complete=false, which the tuner refuses unless told."""
    from safetensors import safe_open

    from adacluster_core import tune
    srv = comfy_server
    slow = dict(TINY, q_clusters=4096, k_clusters=4096, kmeans_iters_first=100, kmeans_iters_reuse=100,
                top_k=8, calibration_dense=False)
    cap = ("AdaClusterCapture", {"enabled": True, "layers": "*", "steps": "*", "max_heads": 1, "max_mb": 64.0,
                                 "filename_prefix": "int_cap/cap"})
    p = build(prompts.wan21_prompt, save_name="slow", config=slow, steps=1, size=512, stats=False, extra_patch=[cap])
    log_mark = len(srv.log_text())          # before queuing: the progress bar may print at once
    pid = srv.queue_prompt(p)
    t_run = time.time()
    while time.time() - t_run < 120:        # until the sampler is running
        q = srv.get("/queue")
        if any(item[1] == pid for item in q.get("queue_running", [])):
            break
        time.sleep(0.2)
    while time.time() - t_run < 120 and "%|" not in srv.log_text()[log_mark:] and "0/1" not in srv.log_text()[log_mark:]:
        time.sleep(0.2)                     # the sampler's progress bar: the step has started
    time.sleep(3.0)
    t0 = time.time()
    srv.post("/interrupt", {})
    while time.time() - t0 < 60:
        h = srv.get(f"/history/{pid}")
        if pid in h:
            break
        time.sleep(0.1)
    dt = time.time() - t0
    h = srv.get(f"/history/{pid}")
    assert pid in h, "the run did not stop within 60 s of /interrupt"
    msgs = [m[0] for m in h[pid]["status"].get("messages", [])]
    assert "execution_interrupted" in msgs, h[pid]["status"]
    assert dt < 15.0, f"stopped {dt:.1f} s after /interrupt"
    assert _system_stats_ok(srv)
    (f,) = sorted((srv.base_dir / "output" / "int_cap").glob("*.safetensors"))
    with safe_open(str(f), "pt") as h:
        assert h.metadata()["complete"] == "false"
    with pytest.raises(ValueError, match="incomplete capture"):
        tune.load_capture(str(f))
    assert tune.load_capture(str(f), allow_incomplete=True).calls


# ------------------------------------------------------------------------------------- no Triton
def test_auto_without_triton_runs_dense_and_says_so(comfy_server, tmp_path):
    """A second server without TRITON_INTERPRET (CPU, so Triton cannot run): auto = ComfyUI's
    dense attention, bit-identical to the unpatched model; Stats names the kernel."""
    import sys

    import torch

    from tests.conftest import COMFY_DIR, PACK_DIR, PACK_NAME, TEST_PACK_DIR, TEST_PACK_NAME
    from tests.harness.comfy_server import ComfyServer

    out = tmp_path / "out"
    out.mkdir()
    env = {"ADACLUSTER_TEST_OUT": str(out), "TRITON_INTERPRET": "0"}
    srv = ComfyServer(sys.executable, COMFY_DIR, tmp_path / "base",
                      custom_nodes={PACK_NAME: PACK_DIR, TEST_PACK_NAME: TEST_PACK_DIR}, env=env)
    srv.prepare_base()
    for f in comfy_server.models_dir.iterdir():
        srv.add_model(f.resolve(), f.name)
    with srv:
        ref = srv.run_prompt(prompts.wan21_prompt(steps=2, save_name="ref"), timeout=300)
        assert ref
        cfgs = {"auto": dict(TINY, backend="auto"), "triton": dict(TINY, backend="triton"),
                "torch": dict(TINY, backend="torch", k_clusters=8, calibration_dense=False)}
        for name, c in cfgs.items():
            entry = srv.run_prompt(build(prompts.wan21_prompt, save_name=f"nt_{name}", config=c, steps=2), timeout=300)
            s = stats_of(entry)
            if name == "torch":   # the reference runs only when asked for
                assert s["sparse_calls"] > 0 and s["kernels"].get("reference") == s["sparse_calls"], s["kernels"]
                continue
            assert s["sparse_calls"] == 0 and s["dense_reasons"].get("dense: no triton", 0) > 0, s["dense_reasons"]
            assert s["kernels"] == {"dense: no triton": s["dense_reasons"]["dense: no triton"]}
            assert "dense: no triton" in text_of(entry)
            a, b = torch.load(out / f"nt_{name}.pt"), torch.load(out / "ref.pt")
            assert torch.equal(a, b), (a - b).abs().max()
