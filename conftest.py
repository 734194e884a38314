"""pytest only (ComfyUI never reads this file).

The clone's root is a ComfyUI custom-node package: its __init__.py registers the nodes through
relative imports, which work when ComfyUI loads the folder as a package from custom_nodes/. pytest
makes the root a `Package` collector (it holds __init__.py) and imports that file before the first
test; for a clone named `adacluster-comfyui` (not a Python identifier) it becomes a top-level module
and, once ComfyUI is importable in the test process, the relative import fails: every test errors
(issue 11). The root Package's setup is therefore skipped, so pytest never imports the root
__init__.py; tests that need the pack load it as ComfyUI does: the server tests through ComfyUI's own
custom_nodes/ loader (tests/harness/comfy_server.py, tests/comfy/test_clone_names.py), the in-process
tests load nodes/ alone as a package (`load_nodes_module`, tests/comfy/_helpers.py).
(A pytest_collect_directory hook cannot help: the root's collector is chosen by the parent folder's
hooks.)
"""
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parent


def _is_root_package(node) -> bool:
    return isinstance(node, pytest.Package) and Path(node.path).resolve() == _ROOT


def pytest_collection_modifyitems(session, config, items):
    seen = set()
    for item in items:
        for node in item.listchain():
            if id(node) not in seen and _is_root_package(node):
                seen.add(id(node))
                node.setup = lambda: None  # Package.setup would import the root __init__.py
