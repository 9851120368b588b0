"""A real inference service on 127.0.0.1 for the endpoint tests: a torch model in both JSON shapes, and injected faults.

Routes: POST /v2/models/NAME/infer (Open Inference Protocol v2; NAME ending in "-labels" answers
labels only) and POST /predict ({"instances": [...]} -> {"predictions": [...]}). `faults` is a
queue of faults for the next requests: "500", "429" (with Retry-After), "slow" (beyond the
client's timeout), "malformed" (not JSON), "wrong_count" (one score row short), "reset" (the
connection closed without an answer). The server counts what it received: requests, inputs,
and each input's digest (to show that no input is sent twice), and the headers it saw.
"""

from __future__ import annotations

import hashlib
import json
import socket
import struct
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import torch


class InferenceServer:
    def __init__(self, model: torch.nn.Module, input_shape: tuple[int, ...], slow_seconds: float = 3.0, port: int = 0,
                 stop_after: int | None = None) -> None:
        self.model, self.input_shape, self.slow_seconds = model.eval(), input_shape, slow_seconds
        self.faults: deque[str] = deque()
        self.requests = 0
        self.inputs = 0
        self.digests: list[str] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self.stop_after = stop_after  # requests answered before the server goes away, as if killed
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> "InferenceServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        if not self._stopped.is_set():
            self._stopped.set()
            self._httpd.shutdown()
            self._httpd.server_close()

    def _answer(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.model(torch.from_numpy(x)).numpy()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                labels = self.path.endswith("-labels/infer")
                if self.path.startswith("/v2/"):
                    tensor = body["inputs"][0]
                    x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
                else:
                    x = np.asarray(body["instances"], dtype=np.float32)
                with server._lock:
                    if server.stop_after is not None and server.requests >= server.stop_after:
                        threading.Thread(target=server.stop, daemon=True).start()
                        self.connection.close()
                        return
                    server.requests += 1
                    server.inputs += len(x)
                    server.digests += [hashlib.sha256(row.tobytes()).hexdigest() for row in x]
                    server.headers.append(dict(self.headers))
                    fault = server.faults.popleft() if server.faults else ""
                if fault == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    return
                if fault in ("500", "429"):
                    self.send_response(int(fault))
                    if fault == "429":
                        self.send_header("Retry-After", "1")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if fault == "slow":
                    time.sleep(server.slow_seconds)
                scores = server._answer(x)
                if fault == "wrong_count":
                    scores = scores[:-1]
                out = scores.argmax(1) if labels else scores
                if self.path.startswith("/v2/"):
                    payload = {"model_name": self.path.split("/")[3], "outputs": [
                        {"name": "output-0", "shape": list(out.shape), "datatype": "INT64" if labels else "FP32", "data": out.ravel().tolist()}]}
                else:
                    payload = {"predictions": out.tolist()}
                data = b'{"outputs": [' if fault == "malformed" else json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler
