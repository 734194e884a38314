// AdaCluster for ComfyUI: frontend extension.
//
// The AdaCluster Stats node returns its readout as `ui.text` (ui.PreviewText) and its density
// heatmap as the standard `ui.images` list. The ComfyUI frontend (1.32.x) draws `images` for any
// node by itself, but draws PreviewText only for the core PreviewAny node, so this extension adds a
// read-only multiline text widget ("adacluster_stats") to the Stats node, creates it once, and
// fills it on every execution. AdaCluster Compare gets the same widget for its PSNR / SSIM readout.
// Nothing here is needed for the Python side to work.
import { app } from "../../scripts/app.js";

// Nodes that get a read-only text widget for their PreviewText readout: type -> widget name, placeholder.
const TEXT_NODES = {
  AdaClusterStats: ["adacluster_stats", "Run the workflow: the AdaCluster sparse-attention readout appears here."],
  AdaClusterCompare: ["adacluster_compare", "Run the workflow: PSNR / SSIM of the test frames vs the reference appear here."],
};

// Turn whatever the node sent into display text. PreviewText sends {text: [str]}; a JSON payload
// (e.g. {adacluster: [{...}]}) is pretty-printed as a fallback.
function statsText(message) {
  if (!message) return "";
  const pick = (v) => (Array.isArray(v) ? v.filter((x) => x !== null && x !== undefined).join("\n") : v);
  const text = pick(message.text);
  if (typeof text === "string" && text.length) return text;
  for (const key of ["adacluster_stats", "adacluster_compare", "stats", "adacluster"]) {
    const v = pick(message[key]);
    if (typeof v === "string" && v.length) return v;
    if (v && typeof v === "object") return JSON.stringify(v, null, 2);
  }
  return "";
}

// A read-only multiline text widget, made the way core PreviewAny makes its widget when the
// frontend exposes its widget constructors, otherwise as a plain DOM textarea widget.
function makeTextWidget(node, name, placeholder) {
  const ctor = window.comfyAPI?.widgets?.ComfyWidgets?.STRING;
  let widget;
  if (ctor) {
    widget = ctor(node, name, ["STRING", { multiline: true }], app).widget;
  } else {
    const el = document.createElement("textarea");
    widget = node.addDOMWidget(name, "customtext", el, {
      getValue: () => el.value,
      setValue: (v) => { el.value = v; },
    });
    widget.element = el;
  }
  if (widget.options) widget.options.read_only = true;
  const el = widget.element || widget.inputEl;
  if (el) {
    el.readOnly = true;
    el.placeholder = placeholder;
    el.classList?.add("adacluster-stats-text");
    el.style.fontFamily = "monospace";
    el.style.fontSize = "11px";
    el.style.whiteSpace = "pre";
    el.title = "AdaCluster readout (read-only). Copy it into an issue when reporting quality or speed problems.";
  }
  widget.serialize = false; // never stored in the workflow nor sent to the server
  // Room for the readout (grows with its line count, see showStats); the heatmap preview gets the rest.
  if (widget.options) widget.options.getMinHeight = () => node.adaclusterTextHeight ?? 140;
  return widget;
}

function ensureTextWidget(node, [name, placeholder]) {
  let w = node.widgets?.find((x) => x.name === name);
  if (!w) {
    w = makeTextWidget(node, name, placeholder);
    const [w0, h0] = node.size;
    node.setSize([Math.max(w0, 420), Math.max(h0, 320)]);
  }
  return w;
}

function showStats(node, message, spec) {
  const text = statsText(message);
  const w = ensureTextWidget(node, spec);
  w.value = text;
  const el = w.element || w.inputEl;
  if (el && el.value !== text) el.value = text;
  // Keep the last readout on the node object too, so tests and other extensions can read it.
  node.adaclusterStats = { text, message };
  const lines = text ? text.split("\n").length : 0;
  node.adaclusterTextHeight = Math.min(360, Math.max(140, 14 * lines + 24));
  const min = node.computeSize?.();
  if (min) node.setSize([Math.max(node.size[0], min[0]), Math.max(node.size[1], min[1])]);
  node.setDirtyCanvas?.(true, true);
  app.graph?.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "adacluster.stats",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const spec = TEXT_NODES[nodeData?.name];
    if (!spec) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      ensureTextWidget(this, spec);
      return r;
    };

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      // The default handler keeps `images` and shows the heatmap preview on the node.
      const r = onExecuted?.apply(this, arguments);
      try {
        showStats(this, message, spec);
      } catch (e) {
        console.error("[adacluster] could not show stats", e);
      }
      return r;
    };
  },
});
