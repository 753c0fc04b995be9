"""`make lab`: JupyterLab, started headless with the Makefile's options, lists the notebooks, and its kernel
(this environment's python, in the project root) runs compare.ipynb against existing records, retraining nothing."""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from srlib.config import make_config

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ("compare.ipynb", "sr_quality.ipynb", "train.ipynb")
pytestmark = pytest.mark.slow


def lab_options() -> list[str]:
    """The options `make lab` passes (one line in the Makefile), so this test starts the lab the same way."""
    match = re.search(r"^LAB_OPTIONS := (.*)$", (ROOT / "Makefile").read_text(), re.M)
    assert match, "the Makefile defines LAB_OPTIONS on one line"
    return match.group(1).replace("$(CURDIR)", str(ROOT)).split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    def __init__(self, port: int, token: str) -> None:
        self.base, self.token = f"127.0.0.1:{port}", token

    def get(self, path: str) -> tuple[int, bytes]:
        request = urllib.request.Request(f"http://{self.base}{path}", headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()

    def post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(f"http://{self.base}{path}", data=json.dumps(body).encode(), method="POST",
                                         headers={"Authorization": f"token {self.token}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())


@contextmanager
def jupyter_lab(tmp_path: Path) -> Iterator[Lab]:
    """A headless JupyterLab on a free port with a random token; stopped (and its kernels with it) on exit."""
    port, token = free_port(), secrets.token_hex(16)
    private = {name: str(tmp_path / "jupyter" / name) for name in ("config", "runtime", "settings", "workspaces")}
    env = {**os.environ, "JUPYTER_CONFIG_DIR": private["config"], "JUPYTER_RUNTIME_DIR": private["runtime"],
           "JUPYTERLAB_SETTINGS_DIR": private["settings"], "JUPYTERLAB_WORKSPACES_DIR": private["workspaces"]}
    log = tmp_path / "lab.log"
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "jupyter", "lab", *lab_options(), "--no-browser",
                                   "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
                                   "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
                                   *(["--allow-root"] if os.geteuid() == 0 else [])],
                                  cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    lab = Lab(port, token)
    try:
        deadline = time.time() + 30
        while True:
            try:
                if lab.get("/api/status")[0] == 200:
                    break
            except OSError:
                pass
            if server.poll() is not None or time.time() > deadline:
                pytest.fail(f"JupyterLab did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield lab
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


async def _execute(lab: Lab, kernel_id: str, cells: list[str]) -> list[str]:
    """Run code cells one after another in a server kernel (the websocket a browser tab uses); their stdout.

    Fails on the first cell that raises, naming it."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    url = f"ws://{lab.base}/api/kernels/{kernel_id}/channels"
    ws = await websocket_connect(HTTPRequest(url, headers={"Authorization": f"token {lab.token}"}))
    session, printed = uuid.uuid4().hex, []
    try:
        for code in cells:
            msg_id = uuid.uuid4().hex
            ws.write_message(json.dumps({
                "header": {"msg_id": msg_id, "msg_type": "execute_request", "session": session, "username": "test",
                           "version": "5.3", "date": ""},
                "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
                "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                            "allow_stdin": False, "stop_on_error": True}}))
            # The reply comes on the shell channel, the output on iopub: the reply may overtake the last stream
            # message. The kernel's idle status on iopub comes after all output of the request (messaging spec).
            stdout, reply, idle = [], None, False
            while reply is None or not idle:
                message = json.loads(await asyncio.wait_for(ws.read_message(), timeout=90))
                if message.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind, content = message["msg_type"], message["content"]
                if kind == "stream" and content["name"] == "stdout":
                    stdout.append(content["text"])
                elif kind == "execute_reply":
                    reply = content
                elif kind == "status" and content["execution_state"] == "idle":
                    idle = True
            if reply["status"] != "ok":
                pytest.fail(f"cell failed in the lab's kernel: {reply.get('ename')}: {reply.get('evalue')}\n{code}")
            printed.append("".join(stdout))
    finally:
        ws.close()
    return printed


def make_records(out: Path, data: Path, cache: Path) -> None:
    """Two variants x two seeds of a tiny real training: records with everything compare.ipynb reads."""
    from srlib.train import train

    for seed in (0, 1):
        for variant in ("original", "resize_x2"):
            config = make_config(variant, "smoke", seed, epochs=2, width=8, train_size=20, test_size=10)
            train(config, out=out, data=str(data), cache_dir=cache, device="cpu", progress=False, log=lambda *_: None)


def notebook_cells(name: str, parameters: dict) -> list[str]:
    """The notebook's code cells, with `parameters` injected after its parameters cell (as papermill does),
    limited to the names that cell defines."""
    notebook = json.loads((ROOT / "notebooks" / name).read_text())
    cells = []
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        cells.append(source)
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            defined = {t.id for node in ast.parse(source).body if isinstance(node, ast.Assign)
                       for t in node.targets if isinstance(t, ast.Name)}
            cells.append("\n".join(f"{k} = {v!r}" for k, v in parameters.items() if k in defined))
    return cells


def test_lab_lists_the_notebooks_and_reruns_compare_against_existing_records(tmp_path, imagefolder, one_thread):
    out = tmp_path / "runs"
    make_records(out, imagefolder, tmp_path / "cache")
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}

    with jupyter_lab(tmp_path) as lab:
        status, page = lab.get("/lab")
        assert status == 200 and b"JupyterLab" in page
        listing = json.loads(lab.get("/api/contents")[1])
        notebooks = {item["name"] for item in listing["content"] if item["type"] == "notebook"}
        assert set(NOTEBOOKS) <= notebooks, notebooks

        session = lab.post("/api/sessions", {"path": "compare.ipynb", "name": "compare.ipynb", "type": "notebook",
                                             "kernel": {"name": "python3"}})
        cells = ["import os, sys\nprint(os.getcwd())\nprint(sys.executable)"]
        cells += notebook_cells("compare.ipynb", {"out": str(out), "profile": "smoke", "data": str(imagefolder),
                                                  "cache_dir": str(tmp_path / "cache")})
        assert any(f"out = {str(out)!r}" in c for c in cells) and len(cells) > 5  # parameters injected
        # the reader's edit: a new cell, run in the same kernel against the same records
        cells.append("from srlib.runs import load_records\n"
                     "print(sorted((r['config']['variant'], r['config']['seed']) for r in load_records(out, profile)))")
        printed = asyncio.run(_execute(lab, session["kernel"]["id"], cells))

    cwd, executable = printed[0].split()
    assert Path(cwd) == ROOT  # kernels start in the project root, as in `srlib sweep`
    assert Path(executable).resolve() == Path(sys.executable).resolve()  # the project's environment
    assert printed[-1].strip() == str([("original", 0), ("original", 1), ("resize_x2", 0), ("resize_x2", 1)])
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing retrained or rewritten
