"""What the server tests share: a tiny Llama checkpoint, and `fastx serve` started as a user starts it.

The server runs as `python -m fastx serve ...` in a subprocess on 127.0.0.1 with a free port, its
output in a log file (a pipe nobody drains would stall it under load), and the tests wait for
/health. It imports the same fastx as this test session (PYTHONPATH), without the session's
Triton-interpreter switch, offline.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")

STARTUP_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env() -> dict[str, str]:
    import fastx

    drop = ("TRITON_INTERPRET", "FASTX_BACKEND", "FASTX_DEBUG", "FASTX_API_KEY")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    source_root = str(Path(fastx.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([source_root, *filter(None, [env.get("PYTHONPATH")])])
    env["HF_HUB_OFFLINE"] = "1"
    return env


class Server:
    """One `fastx serve` subprocess; `url` is its base (http://127.0.0.1:PORT)."""

    def __init__(self, args: list, log_dir: Path, api_key: str | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        self.log = log_dir / "server.log"
        command = [sys.executable, "-m", "fastx", "serve", *map(str, args), "--port", str(self.port)]
        command += ["--log-level", "warning"]
        if api_key:
            command += ["--api-key", api_key]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=log_dir, env=server_env())
        self._wait_healthy()

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"fastx serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"fastx serve was not healthy after {STARTUP_TIMEOUT_S} s:\n{self.log_tail()}")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def client(self, **kwargs):
        """The official OpenAI client pointed at this server."""
        openai = pytest.importorskip("openai")
        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.api_key or "unused", max_retries=0, **kwargs)

    def metrics(self) -> dict[str, float]:
        """/metrics parsed into {sample name with labels: value}."""
        text = httpx.get(self.url + "/metrics", timeout=10).text
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def start_server(tmp_path_factory):
    """start_server(args, api_key=None) -> Server; every server started is stopped at the session's end."""
    started = []

    def start(args, api_key=None) -> Server:
        server = Server(args, tmp_path_factory.mktemp("server"), api_key)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
