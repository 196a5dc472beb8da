"""The HTML attention viewer in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright's
Python package through the system browser) opens the file with the network cut off, switches layer and head,
and the weights it draws must be the model's probabilities (checked against `transformers`) to float16 precision.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from conftest import minilm_directory
from playwright.sync_api import sync_playwright

import berta
from berta.tokenizer import Tokenizer
from berta.viz import attention_html, attention_maps, render_html

TEXT = "The bank of the river flooded after the storm."
PAIR = "Was the riverbank closed?"
# The system browser (Debian's `chromium`, which `make test` installs); Playwright downloads nothing.
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLOAT16_EPSILON = 2.0**-11  # float16 keeps 11 significant bits: relative rounding error at most 2^-11


@pytest.fixture(scope="module")
def page_and_reference(tmp_path_factory):
    directory = minilm_directory()
    model, tokenizer = berta.load(directory), Tokenizer.from_pretrained(directory)
    path = tmp_path_factory.mktemp("viewer") / "attention.html"
    path.write_text(attention_html(model, tokenizer, TEXT, PAIR, title="MiniLM"), encoding="utf-8")
    maps = attention_maps(model, tokenizer, TEXT, PAIR)
    reference = transformers.BertModel.from_pretrained(directory, attn_implementation="eager").eval()
    inputs = transformers.AutoTokenizer.from_pretrained(directory)(TEXT, PAIR, return_tensors="pt")
    with torch.no_grad():
        expected = torch.stack([a[0] for a in reference(**inputs, output_attentions=True).attentions]).numpy()
    return path, maps, expected


@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium (make test's set-up does)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
        )
        yield browser
        browser.close()


def _drawn(page) -> list[dict]:
    return page.eval_on_selector_all("#edges line.edge", "lines => lines.map(l => ({...l.dataset}))")


def _check(lines, expected, maps, layer, head, pairs):
    """Every drawn (query, key) weight equals float16(berta) exactly and transformers within float16 rounding."""
    for line in lines:
        query, key, weight = int(line["query"]), int(line["key"]), float(line["weight"])
        assert (int(line["layer"]), int(line["head"])) == (layer, head)
        assert weight == float(np.float16(maps.weights[layer, head, query, key]))
        reference = expected[layer, head, query, key]
        assert abs(weight - reference) <= FLOAT16_EPSILON * reference + 2e-6, (query, key, weight, reference)
        pairs.add((query, key))


def test_viewer_draws_the_model_probabilities_offline(page_and_reference, browser, tmp_path):
    path, maps, expected = page_and_reference
    context = browser.new_context(viewport={"width": 1300, "height": 900}, offline=True)
    requests: list[str] = []

    def refuse(route):  # the network is off: every request but the file itself is aborted, and recorded
        requests.append(route.request.url)
        if route.request.url == path.as_uri():
            route.continue_()
        else:
            route.abort()

    context.route("**/*", refuse)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-ready='true']", timeout=30_000)
    n = len(maps.tokens)

    # Tokens are real text in the page, in order, with readable labels.
    assert page.locator("#queries .token").all_text_contents() == maps.tokens
    assert page.locator("#keys .token").all_text_contents() == maps.tokens
    assert page.get_by_text("##bank", exact=True).count() == 2  # "riverbank" is two pieces: findable text

    # Layer 3, head 7: hover a query token, then a key token; the lines carry the weights they draw.
    page.select_option("#layer", "3")
    page.select_option("#head", "7")
    checked: set[tuple[int, int]] = set()
    bank = maps.tokens.index("bank")
    page.hover(f"#queries .token[data-index='{bank}']")
    lines = _drawn(page)
    assert sorted(int(line["key"]) for line in lines) == list(range(n))
    _check(lines, expected, maps, 3, 7, checked)
    opacity = page.eval_on_selector(f"#edges line[data-key='{n - 1}']", "l => Number(l.getAttribute('stroke-opacity'))")
    assert opacity == pytest.approx(expected[3, 7, bank, n - 1], rel=2 * FLOAT16_EPSILON, abs=2e-6)
    readout = page.locator("#readout").text_content()
    top = int(np.argmax(expected[3, 7, bank]))
    assert f"“bank” (token {bank}), layer 3, head 7, attends most to: “{maps.tokens[top]}” " in readout

    page.hover(f"#keys .token[data-index='{bank}']")
    lines = _drawn(page)
    assert sorted(int(line["query"]) for line in lines) == list(range(n))
    _check(lines, expected, maps, 3, 7, checked)
    assert "attended to most by" in page.locator("#readout").text_content()

    # Another layer and head, chosen from the model view's thumbnail.
    page.mouse.move(0, 0)
    page.click("#model-view canvas[data-layer='0'][data-head='2']")
    assert page.input_value("#layer") == "0" and page.input_value("#head") == "2"
    page.hover("#queries .token[data-index='4']")
    lines = _drawn(page)
    assert len(lines) == n
    _check(lines, expected, maps, 0, 2, checked)

    # All heads: one line per head and key, each in its head's colour.
    page.select_option("#head", "all")
    page.hover("#queries .token[data-index='1']")
    lines = _drawn(page)
    assert len(lines) == maps.num_heads * n
    for head in (0, 11):
        _check([line for line in lines if line["head"] == str(head)], expected, maps, 0, head, checked)
    page.click("#legend button[data-head='0']")  # the legend hides one head of the overlay
    page.focus("#queries .token[data-index='1']")  # keyboard focus works as hover does
    assert {line["head"] for line in _drawn(page)} == {str(head) for head in range(1, maps.num_heads)}

    # Sentence-pair filter: text -> pair keeps the text's tokens on the left and the pair's on the right.
    page.mouse.move(0, 0)
    page.select_option("#filter", "0-1")
    sep = maps.tokens.index("[SEP]")
    assert page.locator("#queries .token").all_text_contents() == maps.tokens[: sep + 1]
    assert page.locator("#keys .token").all_text_contents() == maps.tokens[sep + 1:]
    page.select_option("#head", "5")
    page.hover(f"#queries .token[data-index='{bank}']")
    lines = _drawn(page)
    assert sorted(int(line["key"]) for line in lines) == list(range(sep + 1, n))
    _check(lines, expected, maps, 0, 5, checked)

    page.screenshot(path=str(tmp_path / "viewer.png"), full_page=True)
    assert (tmp_path / "viewer.png").stat().st_size > 10_000
    assert errors == []
    assert requests == [path.as_uri()]  # nothing but the file itself was ever requested
    context.close()


def test_viewer_shows_markup_in_tokens_as_text_and_merged_words(browser, roberta, tmp_path):
    """Byte-level BPE on a tiny RoBERTa, merged into words; a label holding `</script>` markup stays text."""
    torch.manual_seed(0)
    model = berta.create(berta.EncoderConfig.preset("tiny")).eval()
    text, pair = "Tags like <b>bold</b> are text, xylophonists!", "Ünïcode wörds"
    maps = attention_maps(model, roberta, text, pair, merge=True)
    assert {"</", "xylophonists", "Ünïcode", "wörds", "</s>"} <= set(maps.tokens)
    maps = dataclasses.replace(maps, tokens=[*maps.tokens[:-1], "</script><b>bold</b>"])  # the closing </s>
    path = tmp_path / "attention.html"
    path.write_text(render_html(maps, title="<b>tiny</b>"), encoding="utf-8")
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-ready='true']", timeout=30_000)
    assert page.locator("#queries .token").all_text_contents() == maps.tokens
    assert page.locator("b").count() == 0  # no markup was parsed, neither from the title nor from a token
    assert page.locator("h1").text_content() == "<b>tiny</b>"
    assert "sub-word tokens merged into words" in page.locator("#summary").text_content()
    page.select_option("#layer", "1")
    page.select_option("#head", "3")
    word = maps.tokens.index("xylophonists")
    page.hover(f"#keys .token[data-index='{word}']")
    lines = _drawn(page)
    assert len(lines) == len(maps.tokens)
    for line in lines:
        assert float(line["weight"]) == float(np.float16(maps.weights[1, 3, int(line["query"]), word]))
    assert errors == []
    page.close()
