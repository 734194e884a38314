"""Start, drive and stop a real ComfyUI server for tests and the demo (stdlib only).

    srv = ComfyServer(python, comfy_dir, base_dir, custom_nodes={"adacluster": repo_root})
    srv.start()            # raises ComfyServerError("ComfyUI server never became ready ...")
    entry = srv.run_prompt(api_prompt, timeout=300)   # history entry; raises on failure
    srv.stop()             # kills the whole process group by PID

`base_dir` gets models/diffusion_models (put checkpoints there), custom_nodes/ (symlinks to
the given packs), input/, output/, temp/, user/. The server log goes to base_dir/comfyui.log.
"""
from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Dict, Iterable, List, Optional

READY_TIMEOUT_S = 90.0


class ComfyServerError(RuntimeError):
    pass


class PromptError(ComfyServerError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pack_line_re(pack_names: Iterable[str]) -> Optional["re.Pattern"]:
    """A line naming one of the packs' custom_nodes folders: `custom_nodes/<name>` followed by the
    end of the line, a space or a colon (so `adacluster` never matches `adacluster_other`)."""
    names = [n for n in pack_names if n]
    if not names:
        return None
    alt = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(r"custom_nodes[/\\](?:" + alt + r")(?=$|[\s:])")


def find_import_failures(log_text: str, pack_names: Iterable[str]) -> List[str]:
    """What ComfyUI itself says went wrong loading one of `pack_names` (folder names under
    custom_nodes/): its "Cannot import <custom_nodes/NAME> module for custom nodes" line (with the
    traceback ComfyUI logged just before it), "(IMPORT FAILED): <custom_nodes/NAME>", "Skip
    <custom_nodes/NAME> module ..." and the comfy_entrypoint errors. A traceback on its own, or one
    whose file paths merely contain the pack's name, is not blamed on the pack: ComfyUI names the
    failing module, and that is the only attribution used. Empty list = clean."""
    pat = _pack_line_re(pack_names)
    if pat is None:
        return []
    problems: List[str] = []
    lines = log_text.splitlines()
    for i, line in enumerate(lines):
        failing = ("(IMPORT FAILED)" in line or ("Cannot import" in line and "module for custom nodes" in line)
                   or "comfy_entrypoint in" in line or ("Skip " in line and "module for custom nodes" in line))
        if not (failing and pat.search(line)):
            continue
        if "Cannot import" in line:  # ComfyUI logs the traceback right before this line
            j = i - 1
            while j >= 0 and not lines[j].startswith("Traceback (most recent call last)") and i - j < 200:
                j -= 1
            if j >= 0 and lines[j].startswith("Traceback (most recent call last)"):
                problems.append("\n".join(lines[j:i + 1]))
                continue
        problems.append(line.strip())
    return problems


# ComfyUI core's own optional nodes (comfy_extras/, comfy_api_nodes/) that need packages the test
# environment does not install (torchaudio has no CPU build for the pinned torch 2.13): reported
# as one note, never as the pack's failure.
KNOWN_CORE_OPTIONAL = {"nodes_audio.py": "torchaudio", "nodes_audio_encoder.py": "torchaudio"}


def core_import_failures(log_text: str) -> List[str]:
    """ComfyUI core modules it logged as "IMPORT FAILED: <file>" (comfy_extras / api nodes)."""
    return sorted({m.group(1) for m in re.finditer(r"^\s*IMPORT FAILED: (\S+)\s*$", log_text, re.M)})


def core_import_note(log_text: str) -> str:
    """One line naming ComfyUI core's optional modules that did not import, or "" when none."""
    failed = core_import_failures(log_text)
    if not failed:
        return ""
    known = [f for f in failed if f in KNOWN_CORE_OPTIONAL]
    other = [f for f in failed if f not in KNOWN_CORE_OPTIONAL]
    parts = []
    if known:
        deps = sorted({KNOWN_CORE_OPTIONAL[f] for f in known})
        parts.append(f"{', '.join(known)} (needs {', '.join(deps)}, not installed here)")
    if other:
        parts.append(", ".join(other))
    return ("ComfyUI core's own optional nodes did not import: " + "; ".join(parts)
            + " - ComfyUI's modules, not the AdaCluster pack")


class ComfyServer:
    def __init__(self, python: str, comfy_dir, base_dir, custom_nodes: Optional[Dict[str, str]] = None,
                 port: Optional[int] = None, extra_args: Iterable[str] = (), env: Optional[Dict[str, str]] = None,
                 ready_timeout: float = READY_TIMEOUT_S, cpu: bool = True):
        self.python = str(python)
        self.comfy_dir = Path(comfy_dir)
        self.base_dir = Path(base_dir)
        self.custom_nodes = dict(custom_nodes or {})
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.env_overrides = dict(env or {})
        self.ready_timeout = ready_timeout
        self.cpu = cpu  # False: no --cpu (ComfyUI rejects --lowvram / --novram together with --cpu)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.base_dir / "comfyui.log"
        # A file database: with "sqlite:///:memory:" 0.3.75 logs sqlite "objects created in a thread
        # can only be used in that same thread" tracebacks after every prompt (harmless, but noise).
        self.database_url = f"sqlite:///{self.base_dir / 'comfyui.db'}"
        self.proc: Optional[subprocess.Popen] = None
        self._log_fh = None
        self.started_in_s: Optional[float] = None

    # ---------------------------------------------------------------- layout
    @property
    def models_dir(self) -> Path:
        return self.base_dir / "models" / "diffusion_models"

    def prepare_base(self):
        for d in ("models/diffusion_models", "custom_nodes", "input", "output", "temp", "user"):
            (self.base_dir / d).mkdir(parents=True, exist_ok=True)
        for name, src in self.custom_nodes.items():
            dst = self.base_dir / "custom_nodes" / name
            if dst.is_symlink() or dst.is_file():
                dst.unlink()
            elif dst.exists():
                shutil.rmtree(dst)
            os.symlink(os.path.abspath(src), dst, target_is_directory=True)

    def add_model(self, path, link_name: Optional[str] = None) -> str:
        """Symlink a checkpoint into models/diffusion_models; returns the UNETLoader name."""
        self.models_dir.mkdir(parents=True, exist_ok=True)
        name = link_name or os.path.basename(path)
        dst = self.models_dir / name
        if not dst.exists():
            os.symlink(os.path.abspath(path), dst)
        return name

    def add_file(self, path, folder: str, link_name: Optional[str] = None) -> str:
        """Symlink a file into models/<folder> (e.g. "loras"); returns the name loaders list."""
        d = self.base_dir / "models" / folder
        d.mkdir(parents=True, exist_ok=True)
        name = link_name or os.path.basename(path)
        if not (d / name).exists():
            os.symlink(os.path.abspath(path), d / name)
        return name

    def command(self) -> List[str]:
        return [self.python, "main.py", *(["--cpu"] if self.cpu else []), "--listen", "127.0.0.1", "--port", str(self.port),
                "--base-directory", str(self.base_dir), "--disable-auto-launch", "--disable-api-nodes",
                "--database-url", self.database_url, *self.extra_args]

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> "ComfyServer":
        if not (self.comfy_dir / "main.py").is_file():
            raise ComfyServerError(f"no ComfyUI at {self.comfy_dir} (run: bash scripts/setup_env.sh)")
        self.prepare_base()
        env = dict(os.environ)
        env.setdefault("TRITON_INTERPRET", "1")
        env["PYTHONUNBUFFERED"] = "1"
        env["HF_HUB_OFFLINE"] = "1"
        env.update(self.env_overrides)
        self._log_fh = open(self.log_path, "wb")
        t0 = time.time()
        self.proc = subprocess.Popen(self.command(), cwd=self.comfy_dir, env=env, stdout=self._log_fh,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        atexit.register(self.stop)
        try:
            self._wait_ready(t0)
        except BaseException:
            self.stop()
            raise
        self.started_in_s = time.time() - t0
        return self

    def _wait_ready(self, t0: float):
        deadline = t0 + self.ready_timeout
        while time.time() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                raise ComfyServerError(f"ComfyUI server never became ready: process exited with code {rc} "
                                       f"after {time.time() - t0:.1f} s\n--- log tail ({self.log_path}) ---\n"
                                       f"{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/system_stats", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, socket.timeout, OSError):
                pass
            time.sleep(0.25)
        raise ComfyServerError(f"ComfyUI server never became ready within {self.ready_timeout:.0f} s "
                               f"(port {self.port})\n--- log tail ({self.log_path}) ---\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        p, self.proc = self.proc, None
        if p is not None and p.poll() is None:
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                try:
                    os.killpg(p.pid, sig)  # our own session/process group (start_new_session=True)
                except ProcessLookupError:
                    break
                try:
                    p.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ---------------------------------------------------------------- logs
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def import_failures(self, pack_names: Iterable[str]) -> List[str]:
        return find_import_failures(self.log_text(), pack_names)

    # ---------------------------------------------------------------- HTTP
    def get(self, path: str, timeout: float = 30):
        """GET path; JSON-decoded when the response is JSON, else bytes."""
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            body = r.read()
            if "json" in r.headers.get("Content-Type", ""):
                return json.loads(body)
            return body

    def post(self, path: str, payload, timeout: float = 30):
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"null")

    def object_info(self) -> dict:
        return self.get("/object_info", timeout=60)

    def queue_prompt(self, api_prompt: dict) -> str:
        try:
            resp = self.post("/prompt", {"prompt": api_prompt, "client_id": str(uuid.uuid4())})
        except urllib.error.HTTPError as e:
            body = e.read().decode(errors="replace")
            try:
                j = json.loads(body)
                msg = json.dumps({"error": j.get("error"), "node_errors": j.get("node_errors")}, indent=1)
            except ValueError:
                msg = body
            raise PromptError(f"POST /prompt rejected (HTTP {e.code}):\n{msg[:6000]}") from None
        if resp.get("node_errors"):
            raise PromptError("POST /prompt node_errors:\n" + json.dumps(resp["node_errors"], indent=1)[:6000])
        return resp["prompt_id"]

    def wait_prompt(self, prompt_id: str, timeout: float = 600, on_poll=None) -> dict:
        t0 = time.time()
        while time.time() - t0 < timeout:
            if not self.alive():
                raise PromptError(f"ComfyUI died while running prompt {prompt_id}\n{self.log_tail()}")
            h = self.get(f"/history/{prompt_id}")
            if prompt_id in h:
                entry = h[prompt_id]
                st = entry.get("status", {})
                if st.get("status_str") == "success" and st.get("completed", True):
                    return entry
                errs = [m[1] for m in st.get("messages", []) if m and m[0] in ("execution_error", "execution_interrupted")]
                detail = json.dumps(errs, indent=1, default=str)[:8000] if errs else json.dumps(st)[:4000]
                raise PromptError(f"prompt {prompt_id} failed ({st.get('status_str')}):\n{detail}")
            if on_poll is not None:
                on_poll(time.time() - t0)
            time.sleep(0.25)
        raise PromptError(f"prompt {prompt_id} did not finish within {timeout:.0f} s\n{self.log_tail()}")

    def run_prompt(self, api_prompt: dict, timeout: float = 600, on_poll=None) -> dict:
        """Queue an API-format prompt and wait for it; returns the /history entry (outputs, status)."""
        return self.wait_prompt(self.queue_prompt(api_prompt), timeout=timeout, on_poll=on_poll)

    def free_memory(self):
        try:
            self.post("/free", {"unload_models": True, "free_memory": True})
        except Exception:
            pass
