"""Imports run one way: read with `ast` (nothing is imported), every import of adacluster_core/ and
nodes/ — module level, inside functions and under TYPE_CHECKING alike, since a lazy import is still a
dependency — is resolved to a module of this repository.

* adacluster_core/ (kernels/ included) has no import cycle;
* kernels/ is the core's bottom layer: its modules import, of this repository, only kernels/ itself
  and `cluster_sort` (nothing from the modules that call them: clustering, layout, reference, api);
* adacluster_core never imports nodes/ or ComfyUI (`comfy`, `comfy_api`, `comfy_extras`, ComfyUI's
  top-level `nodes`, `folder_paths`, `server`, ...);
* nodes/ has no import cycle, and every nodes/ module sits in one layer of the table in
  docs/DESIGN.md (between the `import-layers` markers) and imports only from its own layer or a lower
  one (a new module must be placed there)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("adacluster_core", "nodes")
# top-level modules of ComfyUI the core must never import
COMFY_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "comfy_config", "nodes", "folder_paths",
                 "server", "execution", "node_helpers", "latent_preview", "app"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def repo_modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the two packages."""
    mods = {}
    for pkg in PACKAGES:
        for p in sorted((REPO / pkg).rglob("*.py")):
            mods[_module_name(p)] = p
    return mods


def _resolve_relative(mod: str, is_pkg: bool, level: int, target: str | None) -> str:
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    if level > 1:
        base = base[:len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imports_of(mod: str, path: Path, mods: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(modules of this repository that `mod` imports, top-level names of everything it imports).
    `from X import name` counts as X.name when that is a module of the repository, else as X."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    internal, tops = set(), set()

    def add(name: str):
        tops.add(name.split(".")[0])
        # the deepest repository module the dotted name reaches (no implicit parent packages)
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            cand = ".".join(parts[:i])
            if cand in mods:
                if cand != mod:
                    internal.add(cand)
                return

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                add(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # `..adacluster_core` from nodes/ reaches the pack root: the core as a sibling package
                base = _resolve_relative(mod, is_pkg, node.level, node.module)
            else:
                base = node.module or ""
            if not base:
                continue
            for a in node.names:
                full = f"{base}.{a.name}"
                add(full if full in mods else base)
    return internal, tops


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    mods = repo_modules()
    graph, tops = {}, {}
    for m, p in mods.items():
        graph[m], tops[m] = imports_of(m, p, mods)
    return graph, tops


def cycles(graph: dict[str, set[str]], within: str) -> list[list[str]]:
    """Strongly connected components (more than one module) of the graph restricted to `within`."""
    nodes = [m for m in graph if m == within or m.startswith(within + ".")]
    sub = {m: {t for t in graph[m] if t in nodes} for m in nodes}
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(sub[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def node_side_cycles() -> list[list[str]]:
    return cycles(import_graph()[0], "nodes")


LAYERS_BEGIN, LAYERS_END = "<!-- import-layers:begin -->", "<!-- import-layers:end -->"


def design_layers(text: str | None = None) -> dict[str, int]:
    """nodes/ module -> layer number, from docs/DESIGN.md's table between the markers: rows
    `| <n> <name> | mod, mod, ... |`, lowest layer first (`__init__` is the package itself)."""
    if text is None:
        text = (REPO / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    assert LAYERS_BEGIN in text and LAYERS_END in text, "docs/DESIGN.md lost its import-layers markers"
    block = text.split(LAYERS_BEGIN, 1)[1].split(LAYERS_END, 1)[0]
    layers: dict[str, int] = {}
    for line in block.splitlines():
        m = re.match(r"\|\s*(\d+)\s[^|]*\|([^|]+)\|", line.strip())
        if not m:
            continue
        for name in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", m.group(2)):
            mod = "nodes" if name == "__init__" else f"nodes.{name}"
            assert mod not in layers, f"{mod} is in two layers of docs/DESIGN.md"
            layers[mod] = int(m.group(1))
    return layers


def layer_violations(graph: dict[str, set[str]], layers: dict[str, int]) -> list[tuple[str, str]]:
    """(importer, imported) pairs of nodes/ where the imported module sits in a higher layer."""
    out = []
    for m, targets in sorted(graph.items()):
        if m not in layers:
            continue
        for t in sorted(targets):
            if t in layers and layers[t] > layers[m]:
                out.append((m, t))
    return out


def test_walker_sees_the_known_edges():
    graph, _ = import_graph()
    assert "adacluster_core.config" in graph["adacluster_core.api"]
    assert "adacluster_core.kernels.kmeans_assign" in graph["adacluster_core.clustering"]   # a lazy import
    assert "adacluster_core.kernels._common" in graph["adacluster_core.kernels.gather_rows"]
    assert "adacluster_core.api" in graph["nodes.core"]          # `from ..adacluster_core import api as core_api`
    assert "nodes.patcher" in graph["nodes.sparse_attention"]
    assert "nodes.interop" in graph["nodes.families"]              # a lazy import inside a method


def test_no_import_cycle_in_the_core():
    graph, _ = import_graph()
    found = cycles(graph, "adacluster_core")
    assert not found, f"import cycles in adacluster_core/: {found}"


def test_core_never_imports_the_node_side_or_comfyui():
    graph, tops = import_graph()
    for m in graph:
        if not m.startswith("adacluster_core"):
            continue
        assert not any(t == "nodes" or t.startswith("nodes.") for t in graph[m]), (m, graph[m])
        bad = tops[m] & COMFY_MODULES
        assert not bad, f"{m} imports {sorted(bad)}"


# what adacluster_core/kernels/ may import from this repository (besides kernels/ itself)
KERNEL_DEPENDENCIES = {"adacluster_core.cluster_sort"}


def test_kernels_take_nothing_from_their_callers():
    graph, _ = import_graph()
    kernel_mods = [m for m in graph if m.startswith("adacluster_core.kernels")]
    assert "adacluster_core.kernels.varblock_attn" in kernel_mods
    for m in kernel_mods:
        bad = {t for t in graph[m] if not t.startswith("adacluster_core.kernels")} - KERNEL_DEPENDENCIES
        assert not bad, f"{m} imports {sorted(bad)}: kernels/ may import only kernels/ and {sorted(KERNEL_DEPENDENCIES)}"


def test_design_layer_table_covers_every_node_module():
    graph, _ = import_graph()
    layers = design_layers()
    mods = {m for m in graph if m == "nodes" or m.startswith("nodes.")}
    assert len(set(layers.values())) >= 5, layers
    assert not mods - set(layers), f"nodes/ modules missing from DESIGN.md's layer table: {sorted(mods - set(layers))}"
    assert not set(layers) - mods, f"DESIGN.md's layer table names modules that do not exist: {sorted(set(layers) - mods)}"


def test_no_import_cycle_on_the_node_side():
    found = node_side_cycles()
    assert not found, f"import cycles in nodes/: {found}"


def test_node_side_imports_only_downwards():
    graph, _ = import_graph()
    bad = layer_violations(graph, design_layers())
    assert not bad, f"nodes/ imports from a higher layer (docs/DESIGN.md, import-layers): {bad}"


def test_layer_checks_fail_on_a_planted_violation():
    graph, _ = import_graph()
    layers = design_layers()
    planted = {m: set(t) for m, t in graph.items()}
    planted["nodes.run"].add("nodes.run_summary")            # the run importing the report (as before issue 28)
    planted["nodes.run_summary"].add("nodes.run")
    assert ("nodes.run", "nodes.run_summary") in layer_violations(planted, layers)
    assert ["nodes.run", "nodes.run_summary"] in cycles(planted, "nodes")
    text = (REPO / "docs" / "DESIGN.md").read_text(encoding="utf-8").replace("| 0 core | core |", "| 0 core | core, run |")
    try:
        design_layers(text)
    except AssertionError as e:
        assert "two layers" in str(e)
    else:
        raise AssertionError("a module listed twice was not refused")
