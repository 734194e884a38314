"""The real ComfyUI frontend (comfyui-frontend-package: 1.32.9 with ComfyUI 0.3.75, 1.49.6 with 0.33.0) in headless
Debian Chromium, driven by Playwright, against the session's test server:

1. the page loads and our web extension (web/adacluster.js) is registered;
2. every bundled workflow opens from the template browser (Templates -> Extensions -> adacluster ->
   click its card), the way a user opens it: zero missing node types (the frontend's own
   missing-nodes hook never fires, every node has a registered type) and every widget value
   survives the load;
3. a tiny Wan graph (test-only zero conditioning + the tiny random-weight Wan 2.1 model) is loaded
   into the page and queued with the Run button; the AdaCluster Stats node then shows its readout in
   the text widget made by web/adacluster.js and the heatmap image preview.
4. the bundled "Wan 2.1 A/B check" graph, built by the same scripts/build_workflows.py function with
   the tiny model, the tiny Wan 2.1 VAE and zero conditioning swapped in (no text encoder here), runs
   end to end from the Run button: AdaCluster Compare shows PSNR / SSIM and its chart, Stats its readout.

Screenshots: artifacts/browser/*.png. ADACLUSTER_UPDATE_DOCS_SCREENSHOT=1 also refreshes
docs/screenshot_stats.png (the README picture) from the last one, and docs/ab_check_plot.png (the
A/B chart) from the A/B run.
"""
from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import time

import pytest

from tests.browser.conftest import VIEWPORT
from tests.conftest import PACK_NAME, REPO_ROOT
from tests.harness import prompts
from tests.harness.make_tiny_dits import FILENAMES
from tests.harness.version_diffs import expected_widgets_after_load

pytestmark = [pytest.mark.browser, pytest.mark.server, pytest.mark.per_version]   # each ComfyUI's own frontend

WORKFLOWS = sorted(p.stem for p in (REPO_ROOT / "workflows").glob("*.json"))
STATS_WIDGET = "adacluster_stats"
DOCS_SCREENSHOT = REPO_ROOT / "docs" / "screenshot_stats.png"
DOCS_AB_PLOT = REPO_ROOT / "docs" / "ab_check_plot.png"
COMPARE_WIDGET = "adacluster_compare"
MODEL_FILE_WIDGETS = {"unet_name", "clip_name", "clip_name1", "clip_name2", "vae_name", "ckpt_name"}


def _build_workflows_module():
    spec = importlib.util.spec_from_file_location("adacluster_build_workflows", REPO_ROOT / "scripts" / "build_workflows.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


BW = _build_workflows_module()

# Records every call of the frontend's own "missing node types" hook (app.showMissingNodesError,
# called by loadGraphData with the unknown types) and keeps the dialog behaviour.
INSTALL_MISSING_HOOK = """() => {
  if (window.__adaMissing) return;
  window.__adaMissing = [];
  const orig = app.showMissingNodesError?.bind(app);
  app.showMissingNodesError = (types, ...rest) => { window.__adaMissing.push(types); return orig?.(types, ...rest); };
}"""

GRAPH_SUMMARY = """() => app.graph._nodes.map(n => ({
  id: n.id, type: n.type, registered: !!LiteGraph.registered_node_types[n.type],
  comfyClass: n.constructor?.comfyClass ?? null, hasErrors: !!n.has_errors,
}))"""


def _visible_texts(page, selector: str) -> list[str]:
    return page.evaluate("""(sel) => Array.from(document.querySelectorAll(sel))
        .filter(e => e.offsetParent !== null).map(e => e.innerText.trim()).filter(Boolean)""", selector)


def _fit_view(page):
    page.evaluate("""() => { try { app.extensionManager.command.execute('Comfy.Canvas.FitView'); }
                             catch (e) { app.canvas.ds.reset?.(); } app.graph.setDirtyCanvas(true, true); }""")
    page.wait_for_timeout(400)


BIG_VIEWPORT = {"width": 2560, "height": 1440}


def _screenshot_fitted(page, path):
    """The whole graph fitted into a large window (zoom ~0.8 for the bundled workflows: every
    widget label readable), then the window goes back to its normal size."""
    page.set_viewport_size(BIG_VIEWPORT)
    page.wait_for_timeout(300)
    _fit_view(page)
    page.screenshot(path=str(path))
    page.set_viewport_size(VIEWPORT)
    page.wait_for_timeout(200)


NODE_BOXES = """() => { const T = LiteGraph.NODE_TITLE_HEIGHT || 30;
  return app.graph._nodes.map(n => ({id: n.id, type: n.type, x: n.pos[0], y: n.pos[1] - T,
                                     w: n.size[0], h: n.size[1] + T})); }"""


# The template browser: frontend 1.32.9 .workflow-template-selector-dialog; 1.45.x a PrimeVue dialog
# (.p-dialog), 1.49.x a reka-ui one ([role=dialog]), both labelled global-workflow-template-selector
TEMPLATES_DIALOG = ".workflow-template-selector-dialog, [aria-labelledby='global-workflow-template-selector']"


def _open_templates_dialog(page):
    dialog = page.locator(TEMPLATES_DIALOG).first
    if not dialog.is_visible():  # a first visit opens it by itself; later visits need the sidebar button
        page.locator("button[aria-label='Templates']").first.click()
    dialog.wait_for(state="visible", timeout=30_000)
    return dialog


def _close_templates_dialog(page):
    """The template browser opens by itself on a first visit and has no close control this test can
    rely on: leave it the way a user does, by opening one of our workflows (the tiny graph then
    replaces it)."""
    dialog = page.locator(TEMPLATES_DIALOG)
    if not dialog.count() or not dialog.first.is_visible():
        return
    dialog.get_by_text(PACK_NAME, exact=True).first.click()
    page.locator("[data-testid^='template-workflow-']").first.click()
    dialog.first.wait_for(state="hidden", timeout=30_000)


# ----------------------------------------------------------------------------------------- tests

def test_frontend_loads_with_our_extension(comfy_page, artifacts_dir):
    page = comfy_page
    names = page.evaluate("() => app.extensions.map(e => e.name)")
    assert "adacluster.stats" in names, f"web/adacluster.js not registered; extensions: {names}"
    assert page.evaluate("() => !!LiteGraph.registered_node_types['AdaClusterStats']")
    bad = page.comfy_log.errors_mentioning("adacluster")
    assert not bad, "errors from the pack's web extension:\n" + "\n".join(bad)
    page.screenshot(path=str(artifacts_dir / "00_frontend_loaded.png"))


@pytest.mark.parametrize("name", WORKFLOWS)
def test_bundled_workflow_opens_from_template_browser(comfy_page, artifacts_dir, name):
    page = comfy_page
    needs = BW.REQUIRES_NODE.get(name)
    if needs and not page.evaluate("(t) => !!LiteGraph.registered_node_types[t]", needs):
        pytest.skip(f"{name} needs {needs}, which this ComfyUI does not have")
    expected = json.loads((REPO_ROOT / "workflows" / f"{name}.json").read_text(encoding="utf-8"))
    page.evaluate(INSTALL_MISSING_HOOK)
    page.evaluate("() => { window.__adaMissing.length = 0; }")
    toasts_before = set(_visible_texts(page, ".p-toast-message"))

    dialog = _open_templates_dialog(page)
    # Left navigation: EXTENSIONS -> <pack folder name>
    dialog.get_by_text(PACK_NAME, exact=True).first.click()
    card = page.locator(f"[data-testid='template-workflow-{name}']")
    card.wait_for(state="visible", timeout=15_000)
    thumb_ok = None
    if card.locator("img").count():  # the .jpg card, served from /api/workflow_templates/<pack>/
        try:
            page.wait_for_function("""(sel) => { const i = document.querySelector(sel + ' img');
                return i && i.complete && i.naturalWidth > 0; }""",
                                   arg=f"[data-testid='template-workflow-{name}']", timeout=15_000)
            thumb_ok = True
        except Exception:  # noqa: BLE001 - reported by the assertion below
            thumb_ok = False
    card.click()
    dialog.wait_for(state="hidden", timeout=30_000)
    page.wait_for_function("(n) => app.graph._nodes.length === n", arg=len(expected["nodes"]), timeout=30_000)
    page.wait_for_timeout(500)

    missing_calls = page.evaluate("() => window.__adaMissing")
    assert missing_calls == [], f"{name}: the frontend reported missing node types: {missing_calls}"
    nodes = page.evaluate(GRAPH_SUMMARY)
    assert sorted(n["type"] for n in nodes) == sorted(n["type"] for n in expected["nodes"])
    unregistered = sorted({n["type"] for n in nodes if not n["registered"]})
    assert unregistered == [], f"{name}: node types without a registered class: {unregistered}"
    new_toasts = [t for t in _visible_texts(page, ".p-toast-message") if t not in toasts_before]
    assert not [t for t in new_toasts if "invalid" in t.lower() or "missing" in t.lower() or "error" in t.lower()], \
        f"{name}: the frontend complained while loading: {new_toasts}"
    dialogs = [t for t in _visible_texts(page, "[role=dialog]") if "missing" in t.lower()]
    assert not dialogs, f"{name}: a missing-nodes/models dialog opened: {dialogs}"

    # Widget values survive the load (the file's widget order matches the live node definitions).
    saved = page.evaluate("() => app.graph.serialize()")
    by_id = {n["id"]: n for n in expected["nodes"]}
    for n in saved["nodes"]:
        got = n.get("widgets_values", [])
        # an older frontend's node lacks widgets newer ComfyUI added (tests/harness/version_diffs.py)
        want = expected_widgets_after_load(n["type"], by_id[n["id"]].get("widgets_values", []), got)
        if n["type"] in ("UNETLoader", "CLIPLoader", "DualCLIPLoader", "VAELoader"):
            continue  # model file combos: the test server only has the tiny models
        assert got == want, f"{name}: {n['type']} widgets changed on load: {want} -> {got}"
    stats = [n for n in saved["nodes"] if n["type"] == "AdaClusterStats"]
    assert stats and stats[0].get("widgets_values", []) == [], "the stats text widget must not be serialized"
    has_widget = page.evaluate("(w) => app.graph._nodes.filter(n => n.type === 'AdaClusterStats')"
                               ".every(n => n.widgets?.some(x => x.name === w))", STATS_WIDGET)
    assert has_widget, "web/adacluster.js did not add the stats text widget to AdaClusterStats"
    if thumb_ok is not None:
        assert thumb_ok, f"{name}: the template card's .jpg thumbnail did not load"

    overlaps = _overlaps(page.evaluate(NODE_BOXES))
    assert not overlaps, f"{name}: nodes overlap on the canvas once the frontend sized them: {overlaps}"
    _screenshot_fitted(page, artifacts_dir / f"10_template_{name}.png")


def _tiny_ui_workflow(object_info: dict):
    """The demo-sized Wan 2.1 graph with the AdaCluster chain, as a UI workflow (what a user
    would have on the canvas): zero conditioning, 9 frames of 64x64, 2 steps; AdaCluster with
    min_tokens 0 and no warmup so the tiny model actually goes sparse."""
    p = prompts.wan21_prompt(model_name=FILENAMES["wan21"], steps=2, frames=9, size=64, save_name="browser_tiny")
    p["thr"] = {"class_type": "AdaClusterThresholds",
                "inputs": {"q_clusters": 4, "k_clusters": 8, "top_k": 2, "warmup": 0.0, "dense_layer_fraction": 0.0,
                           "min_tokens": 0, "calibration_dense": False}}
    p["ada"] = {"class_type": "AdaClusterSparseAttention",
                "inputs": {"model": ["1", 0], "preset": "auto", "enabled": True, "config": ["thr", 0]}}
    p["5"]["inputs"]["model"] = ["ada", 0]
    p["stats"] = {"class_type": "AdaClusterStats", "inputs": {"model": ["ada", 0], "samples": ["5", 0]}}
    # first guess only: _arrange_columns() lays the nodes out from their real sizes in the page
    layout = {nid: {"pos": [40 + 40 * i, 40], "size": [300, 100]} for i, nid in enumerate(p)}
    wf = BW.api_to_ui(p, object_info, layout=layout)
    ui_id = {k: i + 1 for i, k in enumerate(p)}   # api_to_ui numbers the nodes in prompt order
    columns = [[ui_id[k] for k in col if k in ui_id] for col in COLUMNS]
    placed = {i for col in columns for i in col}
    columns[0] += [ui_id[k] for k in p if ui_id[k] not in placed]   # anything else: first column
    return wf, columns


# Columns of the tiny graph's API node ids, left to right; each node gets at least its computeSize() (every widget and
# its text visible), columns sit GAP px apart and never overlap. The Stats node is wide enough for
# its readout lines and tall enough for the readout plus the heatmap.
COLUMNS = [["1", "3", "4"], ["thr"], ["ada", "5", "6"], ["stats"]]
CLEAR_OF_CHROME = [90, 130]   # client px right of the sidebar, below the tab bar and workflow-name pill
STATS_SIZE = [760, 720]
ARRANGE = """([columns, statsSize]) => {
  const GAP = 40, TITLE = LiteGraph.NODE_TITLE_HEIGHT || 30;
  let x = 40;
  for (const col of columns) {
    let y = 40 + TITLE, w = 0;
    for (const id of col) {
      const n = app.graph.getNodeById(id);
      if (!n) continue;
      const min = n.computeSize ? n.computeSize() : n.size;
      const want = n.type === 'AdaClusterStats' ? statsSize : [Math.max(n.size[0], 320), 0];
      n.setSize([Math.max(min[0], want[0]), Math.max(min[1], want[1])]);
      n.pos = [x, y];
      y += n.size[1] + TITLE + GAP;
      w = Math.max(w, n.size[0]);
    }
    x += w + GAP;
  }
  app.graph.setDirtyCanvas(true, true);
  return app.graph._nodes.map(n => ({id: n.id, type: n.type, x: n.pos[0], y: n.pos[1] - TITLE,
                                     w: n.size[0], h: n.size[1] + TITLE}));
}"""


def _arrange_columns(page, columns) -> list:
    boxes = page.evaluate(ARRANGE, [columns, STATS_SIZE])
    page.wait_for_timeout(300)
    return boxes


def _overlaps(boxes: list) -> list:
    out = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            if a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]:
                out.append((a["type"], b["type"]))
    return out


def _click_run(page) -> str:
    """Queue like a user: the Run button of the action bar; app.queuePrompt(0, 1) if it can't be found."""
    for loc in (page.get_by_role("button", name="Run", exact=True), page.locator("button:has-text('Run')"),
                page.locator("button.comfy-queue-btn")):
        try:
            if loc.count() and loc.first.is_visible():
                loc.first.click()
                return "button"
        except Exception:  # noqa: BLE001 - try the next way
            continue
    page.evaluate("() => app.queuePrompt(0, 1)")
    return "app.queuePrompt"


def test_queue_tiny_graph_shows_stats_readout(comfy_page, comfy_server, artifacts_dir):
    page = comfy_page
    wf, columns = _tiny_ui_workflow(comfy_server.object_info())
    _close_templates_dialog(page)   # a first visit opens it by itself (when this test runs alone)
    page.evaluate("async (wf) => { await app.loadGraphData(wf, true, true, 'adacluster_browser_tiny'); }", wf)
    page.wait_for_function("(n) => app.graph._nodes.length === n", arg=len(wf["nodes"]))
    page.wait_for_timeout(500)
    stats_id = next(n["id"] for n in wf["nodes"] if n["type"] == "AdaClusterStats")
    boxes = _arrange_columns(page, columns)
    assert not _overlaps(boxes), f"nodes overlap on the canvas: {_overlaps(boxes)}"

    t0 = time.time()
    how = _click_run(page)
    try:
        page.wait_for_function(
            """([id, w]) => { const n = app.graph.getNodeById(id);
                const x = n?.widgets?.find(v => v.name === w);
                return !!x && typeof x.value === 'string' && x.value.includes('density'); }""",
            arg=[stats_id, STATS_WIDGET], timeout=420_000, polling=500)
    except Exception:
        page.screenshot(path=str(artifacts_dir / "20_tiny_run_FAILED.png"))
        raise AssertionError(f"the Stats readout never appeared (queued via {how}).\nbrowser console:\n"
                             f"{page.comfy_log.tail()}\nserver log:\n{comfy_server.log_tail(40)}")
    wall = time.time() - t0

    text = page.evaluate("([id, w]) => app.graph.getNodeById(id).widgets.find(v => v.name === w).value",
                         [stats_id, STATS_WIDGET])
    assert "AdaCluster" in text and "density" in text, text
    # the readout's count line ("calls: N  sparse: M  dense: K"): the tiny graph really went sparse
    m = re.search(r"\bsparse: (\d+)", text)
    assert m and int(m.group(1)) > 0, f"no sparse call in the readout:\n{text}"
    shown = page.evaluate("""([id, w]) => { const x = app.graph.getNodeById(id).widgets.find(v => v.name === w);
                                            const el = x.element || x.inputEl; return el ? el.value : null; }""",
                          [stats_id, STATS_WIDGET])
    assert shown is None or shown == text, "the textarea on the node does not show the readout"
    # The heatmap: the ui `images` output reaches the node and the image actually decodes.
    page.wait_for_function("""(id) => { const n = app.graph.getNodeById(id);
        return n.imgs && n.imgs.length > 0 && n.imgs[0].complete && n.imgs[0].naturalWidth > 0; }""",
                           arg=stats_id, timeout=30_000)
    src = page.evaluate("(id) => app.graph.getNodeById(id).imgs[0].src", stats_id)
    assert "/view?" in src and "type=temp" in src, src

    # The run resized the Stats node (readout + heatmap): lay out again, check nothing overlaps and
    # every readout line fits the node's width (no cut-off text).
    boxes = _arrange_columns(page, columns)
    assert not _overlaps(boxes), f"nodes overlap on the canvas after the run: {_overlaps(boxes)}"
    fits = page.evaluate("""([id, w]) => { const x = app.graph.getNodeById(id).widgets.find(v => v.name === w);
        const el = x.element || x.inputEl; if (!el || !el.offsetParent) return null;
        return {scroll: el.scrollWidth, client: el.clientWidth}; }""", [stats_id, STATS_WIDGET])
    if fits is not None:
        assert fits["scroll"] <= fits["client"] + 2, f"the readout is cut off on the node: {fits}"

    # Screenshots at zoom 1.0 (readable): the patch node + sampler column next to the Stats node
    # (the README picture), and the whole graph fitted to the window.
    clip = page.evaluate("""([id, margin]) => { const ds = app.canvas.ds; const T = LiteGraph.NODE_TITLE_HEIGHT || 30;
        const ada = app.graph._nodes.find(n => n.type === 'AdaClusterSparseAttention');
        const st = app.graph.getNodeById(id);
        const r = app.canvas.canvas.getBoundingClientRect();
        // zoom 1.0, the patch node's top-left corner `margin` px inside the free canvas area
        ds.scale = 1.0;
        ds.offset[0] = (margin[0] - r.left) - ada.pos[0];
        ds.offset[1] = (margin[1] - r.top) - (ada.pos[1] - T);
        app.graph.setDirtyCanvas(true, true);
        const x0 = margin[0] - 14, y0 = margin[1] - 30;   // room for the node badges above the titles
        const x1 = r.left + (st.pos[0] + st.size[0] + ds.offset[0]) + 12;
        const y1 = r.top + (Math.max(st.pos[1] + st.size[1], ada.pos[1]) + ds.offset[1]) + 12;
        return {x: x0, y: y0, width: Math.min(x1, r.right) - x0, height: Math.min(y1, r.bottom) - y0}; }""",
                         [stats_id, CLEAR_OF_CHROME])
    page.wait_for_timeout(800)
    shot = artifacts_dir / "20_tiny_run_stats.png"
    page.screenshot(path=str(shot))
    page.screenshot(path=str(artifacts_dir / "20_tiny_run_stats_node.png"), clip=clip)
    _screenshot_fitted(page, artifacts_dir / "21_tiny_run_graph.png")
    (artifacts_dir / "tiny_run_stats.txt").write_text(f"queued via {how}; readout after {wall:.1f} s\n\n{text}\n")
    if os.environ.get("ADACLUSTER_UPDATE_DOCS_SCREENSHOT") == "1":
        _save_docs_screenshot(artifacts_dir / "20_tiny_run_stats_node.png")


def _save_docs_screenshot(src):
    """Copy a screenshot to docs/screenshot_stats.png, palette-quantised to stay < 300 KB."""
    from PIL import Image
    img = Image.open(src).convert("RGB")
    for colors in (256, 128, 64):
        buf = io.BytesIO()
        img.quantize(colors=colors).save(buf, "PNG", optimize=True)
        if buf.tell() < 300_000:
            break
    DOCS_SCREENSHOT.write_bytes(buf.getvalue())


def _tiny_ab_workflow(object_info: dict, ab_models: dict) -> dict:
    """The bundled A/B graph (scripts/build_workflows.py: wan21_ab_check) at test size: the tiny Wan
    2.1 model whose attention matters and the tiny VAE (tests/harness/make_ab_models.py), zero
    conditioning instead of the T5 encoder (not loadable here), 9 frames of 64x64, 4 steps; B gets a
    Thresholds config with a small budget so the tiny model goes sparse."""
    g = BW.wan21_ab_check()
    P, L = g["prompt"], g["layout"]
    P["unet"]["inputs"]["unet_name"] = ab_models["wan21_sharp"]
    P["vae"]["inputs"]["vae_name"] = ab_models["vae"]
    P.pop("clip")
    for k in ("pos", "neg"):
        P[k] = {"class_type": "AdaClusterTestZeroConditioning", "inputs": {"tokens": 16, "width": 4096, "pooled_width": 0}}
    P["latent"]["inputs"].update(width=64, height=64, length=9)
    for k in ("ks", "ks_dense"):
        P[k]["inputs"]["steps"] = 4
    P["thr"] = {"class_type": "AdaClusterThresholds",
                "inputs": {"q_clusters": 8, "k_clusters": 8, "top_k": 1, "max_density": 0.05, "pooled_tail": False,
                           "warmup": 0.0,
                           "dense_layer_fraction": 0.0, "min_tokens": 0, "calibration_dense": False, "backend": "torch"}}
    P["ada"]["inputs"]["config"] = ["thr", 0]
    L["thr"] = {"pos": [880, 800], "size": [320, 300]}
    note = {"type": "MarkdownNote", "title": "AdaCluster: read me", "text": g["note"], **g["note_layout"]}
    return BW.api_to_ui(P, object_info, layout=L, extra_nodes=[note], groups=g["groups"])


def test_ab_check_workflow_runs_end_to_end(comfy_page, comfy_server, ab_models, artifacts_dir):
    page = comfy_page
    dialog = page.locator(TEMPLATES_DIALOG).first
    if dialog.is_visible():  # a first visit opens the template browser by itself: close it (screenshots)
        page.keyboard.press("Escape")
        dialog.wait_for(state="hidden", timeout=10_000)
    wf = _tiny_ab_workflow(comfy_server.object_info(), ab_models)
    page.evaluate("async (wf) => { await app.loadGraphData(wf, true, true, 'adacluster_ab_check_tiny'); }", wf)
    page.wait_for_function("(n) => app.graph._nodes.length === n", arg=len(wf["nodes"]))
    page.wait_for_timeout(500)
    cmp_id = next(n["id"] for n in wf["nodes"] if n["type"] == "AdaClusterCompare")
    stats_id = next(n["id"] for n in wf["nodes"] if n["type"] == "AdaClusterStats")

    how = _click_run(page)
    try:
        page.wait_for_function(
            """([id, w]) => { const n = app.graph.getNodeById(id);
                const x = n?.widgets?.find(v => v.name === w);
                return !!x && typeof x.value === 'string' && x.value.includes('PSNR'); }""",
            arg=[cmp_id, COMPARE_WIDGET], timeout=480_000, polling=500)
    except Exception:
        page.screenshot(path=str(artifacts_dir / "30_ab_check_FAILED.png"))
        raise AssertionError(f"the Compare readout never appeared (queued via {how}).\nbrowser console:\n"
                             f"{page.comfy_log.tail()}\nserver log:\n{comfy_server.log_tail(40)}")
    text = page.evaluate("([id, w]) => app.graph.getNodeById(id).widgets.find(v => v.name === w).value",
                         [cmp_id, COMPARE_WIDGET])
    report = page.evaluate("(id) => app.graph.getNodeById(id).adaclusterStats.message.adacluster_compare[0]", cmp_id)
    assert report["frames"] == 9, report
    assert report["sparse_run"] and report["sparse_run"]["sparse_calls"] > 0, report["sparse_run"]
    assert report["psnr_mean_db"] < report["psnr_cap_db"], "B equals A: the sparse branch did not change anything"
    assert f"{report['psnr_mean_db']:.2f} dB" in text and "SSIM" in text, text
    # the chart preview reaches the node and decodes; Stats shows its readout next to it
    page.wait_for_function("""(id) => { const n = app.graph.getNodeById(id);
        return n.imgs && n.imgs.length > 0 && n.imgs[0].complete && n.imgs[0].naturalWidth > 0; }""",
                           arg=cmp_id, timeout=30_000)
    src = page.evaluate("(id) => app.graph.getNodeById(id).imgs[0].src", cmp_id)
    assert "/view?" in src and "type=temp" in src, src
    size = page.evaluate("(id) => [app.graph.getNodeById(id).imgs[0].naturalWidth, "
                         "app.graph.getNodeById(id).imgs[0].naturalHeight]", cmp_id)
    assert size == [1200, 760], size
    page.wait_for_function("""([id, w]) => { const x = app.graph.getNodeById(id)?.widgets?.find(v => v.name === w);
        return !!x && typeof x.value === 'string' && x.value.includes('density'); }""",
                           arg=[stats_id, STATS_WIDGET], timeout=30_000)
    png = comfy_server.get(src[src.index("/view?"):])
    assert isinstance(png, bytes) and png[:4] == b"\x89PNG"
    (artifacts_dir / "ab_check_plot.png").write_bytes(png)
    (artifacts_dir / "ab_check_compare.txt").write_text(f"queued via {how}\n\n{text}\n")

    clip = page.evaluate("""(id) => { const n = app.graph.getNodeById(id); const ds = app.canvas.ds;
        ds.scale = 0.8; ds.offset[0] = -n.pos[0] + 200; ds.offset[1] = -n.pos[1] + 60;
        app.graph.setDirtyCanvas(true, true);
        const r = app.canvas.canvas.getBoundingClientRect();
        return {x: r.left, y: r.top, width: r.width, height: r.height}; }""", cmp_id)
    page.wait_for_timeout(800)
    page.screenshot(path=str(artifacts_dir / "30_ab_check_compare.png"), clip=clip)
    _fit_view(page)
    page.screenshot(path=str(artifacts_dir / "31_ab_check_graph.png"))
    if os.environ.get("ADACLUSTER_UPDATE_DOCS_SCREENSHOT") == "1":
        DOCS_AB_PLOT.write_bytes(png)
