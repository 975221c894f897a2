"""What a learner sees: notebook 3 in a real JupyterLab, in headless Chromium.

The live dashboard's numbers must move while the stress cell awaits, and no widget or cell error
may show. Needs Debian's `chromium` (or QUEUELAB_CHROMIUM=/path/to/chromium) and the `playwright`
package (the dev extra; it drives the system browser, nothing is downloaded). Without them the test
skips and says why. `make test-browser` runs it alone.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("QUEUELAB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]

# The live statistics panel as label → value. textContent, not innerText: JupyterLab skips rendering
# cells scrolled out of view (content-visibility), and innerText of those reads as empty.
READ_STATS = """() => {
  const panels = [...document.querySelectorAll('.jupyter-widgets')].filter(e => e.textContent.includes('Queue statistics'));
  if (!panels.length) return null;
  const out = {};
  for (const tr of panels[panels.length - 1].querySelectorAll('tr')) {
    const cells = [...tr.querySelectorAll('td')].map(td => td.textContent.trim());
    if (cells.length >= 2) out[cells[0]] = cells[1];
  }
  return out;
}"""


# Every cell has run: none shows [*] and the last one has its execution count.
ALL_RUN = """() => {
  const prompts = [...document.querySelectorAll('.jp-InputArea-prompt')].map(e => e.textContent.trim());
  return prompts.length > 0 && !prompts.some(t => t.includes('*')) && /\\d/.test(prompts[prompts.length - 1]);
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    if CHROMIUM is None:
        pytest.skip("no Chromium: install Debian's `chromium` (or set QUEUELAB_CHROMIUM) to check what JupyterLab shows")
    pytest.importorskip("playwright", reason="the `playwright` package (dev extra) drives the browser")
    # A copy: JupyterLab autosaves, and the committed notebook keeps its full-profile outputs.
    shutil.copy(ROOT / "notebooks" / "03_live_dashboard.ipynb", tmp_path / "03.ipynb")
    port, token = _free_port(), secrets.token_hex(8)
    env = {**os.environ, "QUEUELAB_PROFILE": "quick"}
    log = open(tmp_path / "jupyterlab.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}", "--allow-root"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api?token={token}", timeout=1)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "JupyterLab did not start"
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/lab/tree/03.ipynb?token={token}"
    finally:
        server.terminate()
        server.wait(20)
        log.close()


def test_notebook_3_dashboard_moves_while_the_stress_cell_awaits(jupyterlab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(jupyterlab)
        page.wait_for_selector(".jp-Notebook", timeout=90_000)
        select = page.locator("button.jp-mod-accept:has-text('Select')")  # a kernel chooser, if one shows
        if select.count():
            select.first.click()
        # "Run All" before the kernel is up would do nothing: wait for the status bar to say Idle.
        page.wait_for_function("() => document.querySelector('.jp-StatusBar-Widget, #jp-main-statusbar')"
                               "?.textContent.includes('Idle')", timeout=120_000)
        page.click("text=Run", timeout=10_000)  # the menu bar's Run menu
        page.click("text=Run All Cells", timeout=10_000)

        # While the cells run, keep reading the live panel; it must show progress, not a frozen first frame.
        seen: list[dict[str, str]] = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            stats = page.evaluate(READ_STATS)
            if stats and "Completed" in stats:
                seen.append(stats)
            elif seen:  # the live panel gave way to its static snapshot: the queue has stopped
                break
            time.sleep(0.2)
        page.wait_for_function(ALL_RUN, timeout=60_000)
        errors = page.locator("[data-mime-type='application/vnd.jupyter.error']").count()
        widget_errors = page.get_by_text("Error displaying widget").count()
        browser.close()

    completed = [int(s["Completed"]) for s in seen if s["Completed"].isdigit()]
    assert len(set(completed)) >= 2, f"the Completed count never moved: {completed}"
    assert completed == sorted(completed)  # counts only go up
    uptimes = {s.get("Uptime") for s in seen}
    assert len(uptimes) >= 3, "the uptime did not tick"
    assert errors == 0 and widget_errors == 0

