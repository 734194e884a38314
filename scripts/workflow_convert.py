"""The converter of scripts/build_workflows.py: an API-format prompt (class_type + inputs, the way
/prompt takes them) -> the UI-format workflow (litegraph schema 0.4) the ComfyUI frontend opens.

Input order, widget-vs-socket split and defaults are read from a running server's /object_info;
nested inputs of ComfyUI's V3 node API (DynamicCombo, Autogrow, DynamicSlot, MatchType: 0.33's
SaveVideo `format`) are expanded the way the frontend (1.49) builds and saves them (`input_slots`).
Also used by tests/browser and tests/harness/ui_workflow.py (through build_workflows.py's names).
"""
from __future__ import annotations

from typing import Callable, Dict, Iterator, List, Optional, Sequence

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# Node types that exist only in the frontend (never in /object_info).
FRONTEND_ONLY_TYPES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
# Nested / dynamic inputs of ComfyUI's V3 node API (comfy_api/latest/_io.py, e.g. SaveVideo's `format` in
# 0.33): /object_info describes them by these type names, their parts nested in the input's options.
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"   # a combo; each choice brings its own inputs ("<combo>.<input>")
AUTOGROW = "COMFY_AUTOGROW_V3"            # sockets "<group>.<name>" from a template, one more as each is linked
DYNAMIC_SLOT = "COMFY_DYNAMICSLOT_V3"     # a socket; when linked, more inputs "<slot>.<input>"
MATCH_TYPE = "COMFY_MATCHTYPE_V3"         # a socket whose type follows what is linked


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



class _Links:
    """The workflow's links, numbered from 1: rows [id, from node, from slot, to node, to slot, type],
    and the ids leaving each (node, output slot)."""

    def __init__(self):
        self.rows: List[list] = []
        self.by_output: Dict[tuple, List[int]] = {}

    def add(self, src: int, src_slot: int, dst: int, dst_slot: int, t: str) -> int:
        link_id = len(self.rows) + 1
        self.rows.append([link_id, src, src_slot, dst, dst_slot, t])
        self.by_output.setdefault((src, src_slot), []).append(link_id)
        return link_id


def _node_slots(k: str, ct: str, oi: dict, given: dict, strict: bool) -> List[tuple]:
    """The (name, spec) slots of prompt node `k`, nested V3 inputs chosen / grown by what it gives."""
    slots = list(input_slots(oi, choice=lambda name, s: given.get(name) if not _is_link(given.get(name)) else None,
                             linked=lambda name: _is_link(given.get(name))))
    names = [name for name, _s in slots]
    unknown = sorted(set(given) - set(names))
    if unknown and strict:
        raise ValueError(f"node {k} ({ct}): unknown input(s) {unknown}; it has {names}")
    return slots


def _inputs_and_widgets(k: str, slots: List[tuple], given: dict, prompt: Dict[str, dict], object_info: dict,
                        ids: Dict[str, int], links: _Links) -> tuple:
    """The UI node's `inputs` (linked sockets, widgets driven by a link, unconnected sockets) and its
    `widgets_values`, in slot order; each link is added to `links`."""
    inputs, widgets = [], []
    for name, s in slots:
        t = _spec_type(s)
        v = given.get(name)
        if _is_link(v):
            src = ids[v[0]]
            if "," in t or t == "*":  # a socket of several types (MatchType, "*"): the link carries the source's
                src_out = object_info[prompt[v[0]]["class_type"]]["output"]
                t = src_out[v[1]] if v[1] < len(src_out) else t
            entry = {"name": name, "type": t, "link": links.add(src, v[1], ids[k], len(inputs), t)}
            if _is_widget(s):
                entry["widget"] = {"name": name}
            inputs.append(entry)
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
    return inputs, widgets


def _ui_node(node_id: int, order: int, ct: str, n: dict, lay: dict, inputs: list, widgets: list) -> dict:
    """One UI node (outputs filled in later), placed by `lay` or on a 4-column grid."""
    node = {"id": node_id, "type": ct,
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
    return node


def _note_node(node_id: int, order: int, extra: dict) -> dict:
    """A frontend-only node (MarkdownNote, Note): {"type", "text", "pos", "size", "title", colours}."""
    return {"id": node_id, "type": extra.get("type", "MarkdownNote"), "pos": list(extra["pos"]),
            "size": list(extra.get("size", [400, 300])), "flags": {}, "order": order, "mode": 0,
            "inputs": [], "outputs": [], "properties": {}, "widgets_values": [extra["text"]],
            **({"title": extra["title"]} if extra.get("title") else {}),
            "color": extra.get("color", "#432"), "bgcolor": extra.get("bgcolor", "#653")}


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
    links = _Links()
    infos = {}
    for order, (k, n) in enumerate(prompt.items()):
        ct = n["class_type"]
        if ct not in object_info:
            raise ValueError(f"node {k}: type {ct!r} is not in /object_info (is the pack loaded?)")
        oi = object_info[ct]
        infos[ids[k]] = oi
        given = n.get("inputs", {})
        slots = _node_slots(k, ct, oi, given, strict)
        inputs, widgets = _inputs_and_widgets(k, slots, given, prompt, object_info, ids, links)
        nodes.append(_ui_node(ids[k], order, ct, n, layout.get(k, {}), inputs, widgets))
    for nd in nodes:
        oi = infos[nd["id"]]
        nd["outputs"] = [{"name": nm, "type": t, "links": links.by_output.get((nd["id"], i), []), "slot_index": i}
                         for i, (nm, t) in enumerate(zip(oi["output_name"], oi["output"]))]
    next_id = len(nodes) + 1
    for extra in extra_nodes:
        nodes.append(_note_node(next_id, len(nodes), extra))
        next_id += 1
    ui_groups = [{"id": i + 1, "title": g["title"], "bounding": list(g["bounding"]), "color": g.get("color", "#3f789e"),
                  "font_size": 24, "flags": {}} for i, g in enumerate(groups)]
    return {"last_node_id": next_id - 1, "last_link_id": len(links.rows), "nodes": nodes,
            "links": links.rows, "groups": ui_groups, "config": {},
            "extra": {"ds": {"scale": 0.6, "offset": [40, 40]}}, "version": 0.4}


def missing_node_types(workflow: dict, object_info: dict) -> List[str]:
    """Node types a UI workflow uses that the server does not know (frontend-only types excluded)."""
    return sorted({n["type"] for n in workflow.get("nodes", [])} - set(object_info) - FRONTEND_ONLY_TYPES)
