"""Headless Chromium (Debian's) driven by Playwright, and helpers for the
browser terminal page.

Playwright's own browser downloads cannot work on our machines, so the tests
point it at ``/usr/bin/chromium``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests import services

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless browser; skipped locally, failed in CI, if it is missing."""
    if shutil.which(CHROMIUM) is None:
        services.missing("chromium")
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="rwbot-chromium-")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=ARGS
        )
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


SCREEN_JS = """() => {
  const buffer = window.rwTerminal.buffer.active;
  const lines = [];
  for (let i = 0; i < buffer.length; i++) {
    lines.push(buffer.getLine(i).translateToString(true));
  }
  return lines.join("\\n");
}"""


def screen(page: Any) -> str:
    """The terminal's whole buffer as text."""
    return str(page.evaluate(SCREEN_JS))


def run(page: Any, command: str, timeout: float = 30.0) -> str:
    """Type ``command`` into the terminal and return what it printed.

    The output is fenced by two markers echoed around the command, so the
    result does not depend on the prompt or on what was on screen before.
    """
    tag = services.free_port()  # any fresh number
    start, end = f"S{tag}S", f"E{tag}E"
    # Markers are split in the typed line so the echo of the command itself
    # does not count as the marker.
    line = f"echo S{tag}'S'; {command}; echo E{tag}'E'\n"
    page.keyboard.type(line)

    def done() -> list[str] | None:
        text = screen(page)
        lines = text.split("\n")
        if end not in lines:
            return None
        first = lines.index(start)
        last = lines.index(end, first)
        return [("\n".join(lines[first + 1 : last]))]  # a list: "" is an answer

    try:
        out = services.wait_for(done, timeout=timeout, what=f"output of {command!r}")
    except TimeoutError as err:
        raise AssertionError(
            f"no output of {command!r}; screen:\n{screen(page)}"
        ) from err
    return str(out[0])  # type: ignore[index]
