"""Imports run one way in the core: read with `ast` (nothing is imported), every import of
adacluster_core/ and nodes/ — module level and inside functions alike, since a lazy import is
still a dependency — is resolved to a module of this repository.

* adacluster_core/ (kernels/ included) has no import cycle;
* kernels/ is the core's bottom layer: its modules import, of this repository, only kernels/ itself
  and `cluster_sort` (nothing from the modules that call them: clustering, layout, reference, api);
* adacluster_core never imports nodes/ or ComfyUI (`comfy`, `comfy_api`, `comfy_extras`, ComfyUI's
  top-level `nodes`, `folder_paths`, `server`, ...).

nodes/ is not layered yet (issue 28): `node_side_cycles` lists its cycles for the record and a
test only checks that the walker sees nodes/ at all."""
from __future__ import annotations

import ast
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


def test_walker_sees_the_known_edges():
    graph, _ = import_graph()
    assert "adacluster_core.config" in graph["adacluster_core.api"]
    assert "adacluster_core.kernels.kmeans_assign" in graph["adacluster_core.clustering"]   # a lazy import
    assert "adacluster_core.kernels._common" in graph["adacluster_core.kernels.gather_rows"]
    assert "adacluster_core.api" in graph["nodes.core"]          # `from ..adacluster_core import api as core_api`
    assert "nodes.patcher" in graph["nodes.sparse_attention"]


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
