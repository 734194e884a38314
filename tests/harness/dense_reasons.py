"""Every "dense because <reason>" string the AdaCluster Stats node can print, read from the source.

The node modules record a reason for each call that does not run sparse (nodes/*.py: plan.py's plan_call() / _blocking_reason()
and its CallPlan(reason=...), families.py's call classification), and pass
on the core's own reason when sparse_attention() falls back to dense (adacluster_core/api.py,
clustering.py). Reasons built with f-strings are returned as templates with "…" for each
placeholder (f"head_dim {D}" -> "head_dim …"), which is how the README writes them.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterable, Set

# where a reason is an argument: function name -> positional index (keyword "reason" always counts)
_REASON_ARGS = {"CallRecord": 4, "dense": 0, "MultiStageResult": 5}
# functions returning (..., reason, ...) tuples: function -> tuple index of the reason
_REASON_RETURNS = {"classify_call": 1, "detect_family": 1}
# functions returning a reason (or None): every returned value counts
_REASON_FUNCS = {"_blocking_reason"}   # functions whose returns are Stats reasons (nodes/plan.py)
_REASON_TARGETS = {"reason", "mreason", "dense_reason"}


class UnreadableReason(ValueError):
    pass


def _template(node: ast.AST, where: str) -> Set[str]:
    """Reason strings an expression can evaluate to (names/attributes are followed elsewhere)."""
    if isinstance(node, ast.Constant):
        if isinstance(node.value, str):
            return {node.value} if node.value else set()
        if node.value is None:
            return set()
    if isinstance(node, ast.JoinedStr):
        return {"".join(v.value if isinstance(v, ast.Constant) else "…" for v in node.values)}
    if isinstance(node, ast.IfExp):
        return _template(node.body, where) | _template(node.orelse, where)
    if isinstance(node, ast.BoolOp):
        return set().union(*(_template(v, where) for v in node.values))
    if isinstance(node, (ast.Name, ast.Attribute)):
        return set()  # a variable / field: its assignments are collected on their own
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
        return set()  # stats.get("reason"): the core's reasons, collected from the core
    if isinstance(node, ast.Call) and _func_name(node) in _REASON_FUNCS:
        return set()  # its returns are collected on their own
    raise UnreadableReason(f"{where}: cannot read a reason from `{ast.unparse(node)}`; extend "
                           "tests/harness/dense_reasons.py")


def _func_name(call: ast.Call) -> str:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


def reasons_in(path: Path) -> Set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: Set[str] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn.name in _REASON_RETURNS:
            idx = _REASON_RETURNS[fn.name]
            for r in ast.walk(fn):
                if isinstance(r, ast.Return) and isinstance(r.value, ast.Tuple) and len(r.value.elts) > idx:
                    out |= _template(r.value.elts[idx], f"{path.name}:{r.lineno}")
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn.name in _REASON_FUNCS:
            for r in ast.walk(fn):
                if isinstance(r, ast.Return) and r.value is not None:
                    out |= _template(r.value, f"{path.name}:{r.lineno}")
    for node in ast.walk(tree):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call):
            name = _func_name(node)
            if name in _REASON_ARGS and len(node.args) > _REASON_ARGS[name]:
                out |= _template(node.args[_REASON_ARGS[name]], where)
            for kw in node.keywords:
                if kw.arg == "reason":
                    out |= _template(kw.value, where)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Tuple) and isinstance(node.value, ast.Tuple):
                    pairs = zip(t.elts, node.value.elts)
                else:
                    pairs = [(t, node.value)]
                for tt, val in pairs:
                    tname = tt.id if isinstance(tt, ast.Name) else tt.attr if isinstance(tt, ast.Attribute) else ""
                    if tname in _REASON_TARGETS and val is not None:
                        out |= _template(val, where)
    return out


# Core reasons the patcher never prints as such: it reports them under its own name.
# (core text, patcher name, source snippet in nodes/*.py that does the mapping)
MAPPED_CORE_REASONS = [
    ("calibration step (multi-stage key clustering ran; output dense)", "calibration",
     '"calibration" in str('),
]


def stats_reasons(repo_root) -> Set[str]:
    root = Path(repo_root)
    node_files = sorted((root / "nodes").glob("*.py"))
    out: Set[str] = set()
    for p in node_files:
        out |= reasons_in(p)
    for name in ("api.py", "clustering.py", "guards.py"):
        p = root / "adacluster_core" / name
        if p.is_file():
            out |= reasons_in(p)
    nodes_src = "\n".join(p.read_text() for p in node_files)
    for core, _ours, snippet in MAPPED_CORE_REASONS:
        if snippet in nodes_src:
            out.discard(core)
    return out


def readme_troubleshooting_codes(readme_text: str) -> Set[str]:
    """Backticked spans of the README's `## Troubleshooting` section."""
    import re
    sec = readme_text.split("## Troubleshooting", 1)[-1].split("\n## ", 1)[0]
    return set(re.findall(r"`([^`]+)`", sec))


def missing_from_readme(repo_root, readme_text: str) -> Iterable[str]:
    codes = readme_troubleshooting_codes(readme_text)
    return sorted(r for r in stats_reasons(repo_root) if r not in codes)
