"""Helpers of the tests that run ``kface serve`` as a real process: start it, post multipart forms to it."""
from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Optional


class Server:
    """A ``kface serve`` process on a free loopback port; its stderr is gathered in a thread."""

    def __init__(self, *options):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kface", "serve", "--port", "0", "--model", "dlib", "--detector", "dlib",
             "--workers", "2", *map(str, options)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.port = None
        ready = threading.Event()

        def read() -> None:
            for line in self.process.stderr:
                self.lines.append(line)
                if line.startswith("kface serve: http://"):
                    self.port = int(line.split("http://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        ready.wait(timeout=240)
        if self.port is None:
            self.stop()
            raise AssertionError("kface serve did not start:\n" + "".join(self.lines))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the line comes just before uvicorn starts serving
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("kface serve did not answer /health:\n" + "".join(self.lines))

    def connection(self, timeout: float = 120) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def get(self, path: str, headers: dict = None) -> tuple[int, dict]:
        connection = self.connection()
        try:
            connection.request("GET", path, headers=headers or {})
            response = connection.getresponse()
            return response.status, json.loads(response.read() or b"{}")
        finally:
            connection.close()

    def memory(self, field: str) -> int:
        """VmRSS (resident now) or VmHWM (the peak so far) of the server process, in bytes."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {field} in /proc/{self.process.pid}/status")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def multipart(files: dict[str, bytes], fields: Optional[dict[str, str]] = None) -> tuple[bytes, str]:
    """A multipart/form-data body of ``files`` (as JPEG uploads) and text ``fields``, and its content type."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in (fields or {}).items()]
    for name, data in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.jpg"\r\n'
                     f"Content-Type: image/jpeg\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post(connection: http.client.HTTPConnection, path: str, files: dict[str, bytes],
         headers: Optional[dict] = None, fields: Optional[dict[str, str]] = None) -> tuple[int, dict]:
    body, kind = multipart(files, fields)
    connection.request("POST", path, body=body, headers={"Content-Type": kind, **(headers or {})})
    response = connection.getresponse()
    return response.status, json.loads(response.read() or b"{}")
