"""The report in a real browser: headless Chromium renders it to PNG and PDF with no console error and no network request.

`make test` installs Debian's chromium when it is absent; this test skips only where it cannot be had.
Chromium is driven over the DevTools protocol, so every request and console message is seen.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tempfile
import time

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-extensions", "--remote-debugging-port=0",
]


class DevTools:
    def __init__(self, url: str) -> None:
        import websocket

        self.socket = websocket.create_connection(url, timeout=60)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params: object) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, event: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(e.get("method") == event for e in self.events):
                return
            self.events.append(json.loads(self.socket.recv()))
        raise TimeoutError(event)


@pytest.fixture
def browser():
    if CHROMIUM is None:
        pytest.skip("chromium is not installed and could not be installed here (make test installs Debian's chromium when it can)")
    profile = tempfile.mkdtemp(prefix="kansa-chromium-")
    process = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        endpoint = None
        deadline = time.monotonic() + 60
        while endpoint is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            found = re.search(r"DevTools listening on (ws://\S+)", line)
            endpoint = found.group(1) if found else None
        assert endpoint, "chromium did not open its DevTools endpoint"
        port = re.search(r":(\d+)/", endpoint).group(1)
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as answer:
            page = next(t for t in json.load(answer) if t["type"] == "page")
        yield DevTools(page["webSocketDebuggerUrl"])
    finally:
        process.kill()
        process.wait()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("lang", ["en", "ja"])
def test_report_renders_in_chromium_without_errors_or_network(small_run, browser, lang, tmp_path):
    from audit.cli import main

    assert main(["report", str(small_run.out_dir), "--lang", lang]) == 0
    report = (small_run.out_dir / ("report.html" if lang == "en" else f"report.{lang}.html")).resolve()
    for domain in ("Network", "Runtime", "Log", "Page"):
        browser.call(f"{domain}.enable")
    browser.call("Page.navigate", url=report.as_uri())
    browser.wait_for("Page.loadEventFired")
    png = base64.b64decode(browser.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"])
    pdf = base64.b64decode(browser.call("Page.printToPDF", paperWidth=8.27, paperHeight=11.69, printBackground=True)["data"])
    (tmp_path / f"report.{lang}.png").write_bytes(png)
    (tmp_path / f"report.{lang}.pdf").write_bytes(pdf)
    assert png.startswith(b"\x89PNG") and len(png) > 50_000
    pages = len(re.findall(rb"/Type\s*/Page(?!s)", pdf))
    assert pdf.startswith(b"%PDF") and pages >= 13, pages  # the print stylesheet starts each of the 13 sections on an A4 page
    requests = [e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"]
    assert requests and all(url.startswith(("file://", "data:")) for url in requests), requests
    errors = [e for e in browser.events if (e.get("method") == "Runtime.exceptionThrown")
              or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "warning"))
              or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] in ("error", "warning"))]
    assert errors == []
    images = browser.call("Runtime.evaluate", expression="[...document.images].filter(i => i.complete && i.naturalWidth > 0).length")
    assert images["result"]["value"] == 4  # every embedded figure decoded
