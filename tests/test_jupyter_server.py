"""notebooks/01_quickstart.ipynb as a user opens it: in a real JupyterLab server, on the registered `vlekit` kernel.

The test registers this interpreter as the kernel ``vlekit`` the way ``make lab`` does (``ipykernel
install``, here into a temporary prefix), starts ``python -m jupyterlab`` on 127.0.0.1 with a free
port and a token, opens a session for the notebook through the REST API (what JupyterLab's UI does
when a notebook is opened: the kernel starts in ``notebooks/``), reads the notebook through the
contents API, and executes its code cells over the kernel's websocket channels in SMOKE mode (the
cell after ``parameters`` sets ``SMOKE = True`` and ``OUT``, as in tests/test_notebooks.py). The
outputs must hold its tables (text/markdown) and its figures (image/png). The server is always shut
down, and every wait is bounded.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

pytest.importorskip("jupyterlab")
pytest.importorskip("jupyter_server")
nbformat = pytest.importorskip("nbformat")
websocket = pytest.importorskip("websocket")  # websocket-client

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "notebooks/01_quickstart.ipynb"
KERNEL_NAME = "vlekit"
SERVER_START_S = 60
CELL_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """A running Jupyter server's REST API: ``request("GET", "/api/status")`` -> decoded JSON."""

    def __init__(self, *, port: int, token: str, process: subprocess.Popen, log: Path) -> None:
        self.port, self.token, self.process, self.log = port, token, process, log
        self.url = f"http://127.0.0.1:{port}"

    def request(self, method: str, path: str, body: dict | None = None, *, timeout: float = 30) -> dict | list | None:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Authorization": f"token {self.token}",
                                                  "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read()
        return json.loads(text) if text else None

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture
def jupyter_server(tmp_path):
    """JupyterLab on 127.0.0.1:<free port> with a token, the `vlekit` kernel registered; always stopped."""
    prefix = tmp_path / "prefix"
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--prefix", str(prefix), "--name", KERNEL_NAME,
                    "--display-name", "Python (vlekit)"], check=True, capture_output=True, timeout=60)
    home = tmp_path / "jupyter"
    env = {
        **os.environ,
        # Only this test's kernel spec and settings: nothing from the user's ~/.jupyter or ~/.ipython.
        "JUPYTER_PATH": str(prefix / "share" / "jupyter"),
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_DATA_DIR": str(home / "data"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "IPYTHONDIR": str(home / "ipython"),
        "OMP_NUM_THREADS": "1",
    }
    port, token = free_port(), secrets.token_hex(16)
    log = tmp_path / "server.log"
    with log.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
             f"--ServerApp.root_dir={REPO_ROOT}", f"--ServerApp.allow_root={os.geteuid() == 0}"],  # CI runs as root
            env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    server = Server(port=port, token=token, process=process, log=log)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"the Jupyter server exited with {process.returncode}:\n{server.log_tail()}")
            try:
                server.request("GET", "/api/status", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    pytest.fail(f"the Jupyter server did not answer within {SERVER_START_S} s:\n{server.log_tail()}")
                time.sleep(0.5)
        yield server
    finally:
        try:
            server.request("POST", "/api/shutdown", timeout=10)  # stops its kernels too
            process.wait(timeout=20)
        except Exception:  # noqa: BLE001 - whatever went wrong, the process must not outlive the test
            process.kill()
            process.wait(timeout=10)


class KernelChannels:
    """The Jupyter messaging protocol over a server kernel's websocket (``/api/kernels/<id>/channels``)."""

    def __init__(self, server: Server, kernel_id: str) -> None:
        self.session = uuid.uuid4().hex
        self.socket = websocket.create_connection(
            f"ws://127.0.0.1:{server.port}/api/kernels/{kernel_id}/channels?session_id={self.session}",
            header=[f"Authorization: token {server.token}"], timeout=CELL_TIMEOUT_S)

    def send(self, msg_type: str, content: dict) -> str:
        msg_id = uuid.uuid4().hex
        self.socket.send(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": msg_type, "session": self.session, "username": "test",
                       "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "version": "5.3"},
            "parent_header": {}, "metadata": {}, "content": content, "channel": "shell", "buffers": [],
        }))
        return msg_id

    def wait_ready(self) -> None:
        """kernel_info until the kernel answers (its first replies can be lost while it starts)."""
        deadline = time.monotonic() + CELL_TIMEOUT_S
        while time.monotonic() < deadline:
            msg_id = self.send("kernel_info_request", {})
            self.socket.settimeout(5)
            try:
                while True:
                    message = json.loads(self.socket.recv())
                    if message["msg_type"] == "kernel_info_reply" and message["parent_header"].get("msg_id") == msg_id:
                        return
            except websocket.WebSocketTimeoutException:
                continue
            finally:
                self.socket.settimeout(CELL_TIMEOUT_S)
        pytest.fail(f"the kernel gave no kernel_info_reply within {CELL_TIMEOUT_S} s")

    def execute(self, code: str) -> tuple[dict, list]:
        """Run ``code``: (execute_reply content, the cell's outputs as nbformat output nodes)."""
        msg_id = self.send("execute_request", {"code": code, "silent": False, "store_history": True,
                                               "user_expressions": {}, "allow_stdin": False, "stop_on_error": True})
        reply, outputs, idle = None, [], False
        deadline = time.monotonic() + CELL_TIMEOUT_S
        while reply is None or not idle:
            if time.monotonic() > deadline:
                pytest.fail(f"a cell ran past {CELL_TIMEOUT_S} s:\n{code[:500]}")
            message = json.loads(self.socket.recv())
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            kind = message["msg_type"]
            if message["channel"] == "shell" and kind == "execute_reply":
                reply = message["content"]
            elif kind == "status" and message["content"]["execution_state"] == "idle":
                idle = True
            elif kind in ("stream", "display_data", "execute_result", "error"):
                outputs.append(nbformat.v4.output_from_msg(message))
        return reply, outputs

    def close(self) -> None:
        self.socket.close()


@pytest.mark.slow
def test_quickstart_runs_on_the_vlekit_kernel_of_a_real_jupyterlab_server(jupyter_server, tmp_path):
    server = jupyter_server
    specs = server.request("GET", "/api/kernelspecs")
    assert KERNEL_NAME in specs["kernelspecs"], f"kernels the server offers: {sorted(specs['kernelspecs'])}"
    assert specs["kernelspecs"][KERNEL_NAME]["spec"]["argv"][0] == sys.executable  # this (the locked) environment
    with urllib.request.urlopen(urllib.request.Request(f"{server.url}/lab", headers={
            "Authorization": f"token {server.token}"}), timeout=30) as page:
        assert page.status == 200 and b"JupyterLab" in page.read()  # the UI itself is served

    model = server.request("GET", f"/api/contents/{NOTEBOOK}?content=1&type=notebook")
    notebook = nbformat.from_dict(model["content"])
    session = server.request("POST", "/api/sessions", {"path": NOTEBOOK, "name": Path(NOTEBOOK).name,
                                                       "type": "notebook", "kernel": {"name": KERNEL_NAME}})
    assert session["kernel"]["name"] == KERNEL_NAME
    tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{NOTEBOOK}: expected one cell tagged 'parameters', found {len(tagged)}"
    smoke = nbformat.v4.new_code_cell(f"SMOKE = True\nOUT = {str(tmp_path / 'out')!r}")
    notebook.cells.insert(tagged[0] + 1, smoke)

    channels = KernelChannels(server, session["kernel"]["id"])
    try:
        channels.wait_ready()
        cwd_reply, cwd_outputs = channels.execute("import os; print(os.getcwd())")
        assert cwd_reply["status"] == "ok" and cwd_outputs[0]["text"].strip() == str(REPO_ROOT / "notebooks")
        for index, cell in enumerate(c for c in notebook.cells if c.cell_type == "code"):
            reply, cell.outputs = channels.execute(cell.source)
            errors = [o for o in cell.outputs if o["output_type"] == "error"]
            assert reply["status"] == "ok", (f"code cell {index} failed on the server's kernel: "
                                             + "\n".join("\n".join(e["traceback"]) for e in errors)[-4000:])
            cell.execution_count = reply["execution_count"]
    finally:
        channels.close()
    server.request("DELETE", f"/api/sessions/{session['id']}")
    nbformat.write(notebook, tmp_path / "01_quickstart.executed.ipynb")  # for a look when this fails

    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    tables = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    figures = [o["data"]["image/png"] for o in outputs if "image/png" in o.get("data", {})]
    printed = "".join(o.get("text", "") for o in outputs if o["output_type"] == "stream")
    assert "SMOKE=True" in printed, printed[:2000]
    assert any(t.startswith("| kind | name | source | description |") and "tiny-co-attention" in t for t in tables)
    assert any(t.startswith("| choice | answer | logit | softmax |") for t in tables), tables
    # boxes on the frame, object tokens on the patch grid, softmax over the choices: three PNGs of substance
    assert len(figures) >= 3 and all(len(f) > 2000 for f in figures), [len(f) for f in figures]
    assert (tmp_path / "out" / "data").is_dir()  # the synthetic data went to the injected OUT
