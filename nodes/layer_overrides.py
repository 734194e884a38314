"""AdaCluster Layer Overrides: a small per-layer rule grammar (+ tuner profile) -> ADACLUSTER_LAYERS."""
import json
import os
import stat

from comfy_api.latest import io

from . import config_widgets
from .io_types import CATEGORY, AdaClusterLayersType
from .layer_rules import LayerRules, excerpt


PROFILE_MAX_BYTES = 1 << 20   # a tuner profile is a few KiB per hundred layers
PROFILE_NAME_MAX_CHARS = 1024
PROFILE_NAME_EXCERPT = 200    # errors quote at most this much of a profile name


def _profile_roots() -> list[str]:
    """ComfyUI's output then input folder (real paths): the only places a profile is read from."""
    import folder_paths
    return [os.path.realpath(folder_paths.get_output_directory()),
            os.path.realpath(folder_paths.get_input_directory())]


def check_profile_name(name: str) -> str:
    """Lexical check only (no file-system access, safe on the server's event loop during
    validation): returns the cleaned name. Absolute paths are allowed (they must still resolve
    inside output/ or input/ when the node runs); '~' is not expanded."""
    if not isinstance(name, str):
        raise ValueError(f"profile: expected text, got a {type(name).__name__}")
    if len(name) > PROFILE_NAME_MAX_CHARS:   # before any other work on it
        raise ValueError(f"profile: the name is longer than {PROFILE_NAME_MAX_CHARS} characters")
    p = name.strip().strip('"')
    if "\x00" in p:
        raise ValueError("profile: the name contains a NUL character")
    return p


def _name(name) -> str:
    """The profile name as errors quote it (bounded: check_profile_name allows 1024 characters)."""
    return excerpt(name, PROFILE_NAME_EXCERPT)


def _not_found(name: str) -> ValueError:
    # one message for "outside the folders", "missing", "not a regular file", "too large",
    # "unreadable": a graph must not learn which paths exist on the server
    return ValueError(f"profile {_name(name)}: no readable profile of that name in ComfyUI's output or input folder "
                      f"(a regular .json file of at most {PROFILE_MAX_BYTES // 1024} KiB)")


def resolve_profile_path(name: str, roots: list[str] | None = None) -> str | None:
    """The real path of profile `name` inside one of `roots` (default: ComfyUI's output, then
    input folder), following symlinks only when the target stays inside that root; None otherwise.
    A relative name is tried in each root in turn; an absolute one must lie inside a root."""
    p = check_profile_name(name)
    if not p:
        return None
    roots = _profile_roots() if roots is None else [os.path.realpath(r) for r in roots]
    for root in roots:
        cand = os.path.realpath(p if os.path.isabs(p) else os.path.join(root, p))
        if os.path.commonpath([cand, root]) == root and cand != root:
            try:
                st = os.stat(cand)
            except (OSError, ValueError):
                continue
            if stat.S_ISREG(st.st_mode):
                return cand
    return None


def read_profile_text(name: str, roots: list[str] | None = None) -> str:
    """The text of a confined profile file: a regular file (checked again on the open descriptor,
    opened non-blocking so a FIFO swapped in cannot block), at most PROFILE_MAX_BYTES."""
    full = resolve_profile_path(name, roots)
    if full is None:
        raise _not_found(name)
    try:
        fd = os.open(full, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        raise _not_found(name) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > PROFILE_MAX_BYTES:
            raise _not_found(name)
        data = os.read(fd, PROFILE_MAX_BYTES + 1)
    except OSError:
        raise _not_found(name) from None
    finally:
        os.close(fd)
    if len(data) > PROFILE_MAX_BYTES:
        raise _not_found(name)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"profile {_name(name)}: not UTF-8 text") from None


def load_profile_rules(name: str, roots: list[str] | None = None) -> LayerRules:
    """A tuner profile file (adacluster_core.tune) -> LayerRules (ValueError naming the profile
    by the name given, never by its full path)."""
    text = read_profile_text(name, roots)
    try:
        prof = json.loads(text)
    except ValueError as e:
        raise ValueError(f"profile {_name(name)}: not valid JSON ({excerpt(str(e), 120)})") from None
    except RecursionError:   # nested deeper than the parser's recursion limit
        raise ValueError(f"profile {_name(name)}: not valid JSON (nested too deeply)") from None
    try:
        return config_widgets.parse_profile(prof)
    except ValueError as e:
        raise ValueError(f"profile {_name(name)}: {e}") from None


EXAMPLE = """# one rule per line: LAYERS: ACTION[, ACTION...]
# LAYERS: 3 | 0-2 | -1 (last) | 20- (to the end) | *     ACTION: dense | sparse | field=value
0-1, -1: dense
"""


class AdaClusterLayerOverrides(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AdaClusterLayerOverrides",
            display_name="AdaCluster Layer Overrides",
            category=CATEGORY,
            description="Per-layer rules: keep layers dense, force them sparse, or change config fields "
                        "(e.g. '10-19: top_k=64'). Negative indices count from the last layer. Later rules win; "
                        "a connected previous overrides input comes first.",
            inputs=[
                io.String.Input("rules", multiline=True, default=EXAMPLE,
                                tooltip="One rule per line, '#' comments. Examples: '0-2, -1: dense', "
                                        "'10-19: top_k=64', '5: sparse', '*: kmeans_iters_reuse=1'."),
                AdaClusterLayersType.Input("previous", optional=True,
                                           tooltip="Rules from another Layer Overrides node (applied first)."),
                io.String.Input("profile", default="", optional=True,
                                tooltip="Optional tuner profile (python -m adacluster_core.tune ... --out FILE.json): "
                                        "a .json file inside ComfyUI's output (then input) folder, named relative "
                                        "to it (at most 1 MiB; nothing outside those folders is read). Its "
                                        "per-layer settings apply before the text rules (text rules win)."),
            ],
            outputs=[AdaClusterLayersType.Output(display_name="layer_overrides")],
        )

    @classmethod
    def validate_inputs(cls, rules=None, profile=None):
        # runs on the server's event loop: the rules are parsed, the profile NAME is only checked
        # lexically (the file is read in execute, confined to output/ and input/)
        try:   # size-bounded before parsing (layer_rules.MAX_RULES_CHARS): a few ms at most
            if rules is not None:
                config_widgets.parse_layer_rules(rules)
        except ValueError as e:
            return f"AdaCluster Layer Overrides: rules: {e}"
        try:
            if profile:
                check_profile_name(profile)
        except ValueError as e:
            return f"AdaCluster Layer Overrides: {e}"
        return True

    @classmethod
    def fingerprint_inputs(cls, rules=None, previous=None, profile=None):
        if not profile:
            return ""
        try:   # re-read a re-written profile; stat only (never opens), confined like the read
            full = resolve_profile_path(profile)
            st = os.stat(full) if full is not None else None
        except (OSError, ValueError):
            st = None
        return f"{st.st_mtime_ns}:{st.st_size}" if st is not None else float("nan")

    @classmethod
    def execute(cls, rules, previous=None, profile="") -> io.NodeOutput:
        try:
            try:
                parsed = config_widgets.parse_layer_rules(rules)
            except ValueError as e:
                raise ValueError(f"rules: {e}") from None
            if profile:
                parsed = load_profile_rules(profile).chain(parsed)
        except ValueError as e:
            raise ValueError(f"AdaCluster Layer Overrides: {e}") from None
        if isinstance(previous, LayerRules):
            parsed = previous.chain(parsed)
        return io.NodeOutput(parsed)
