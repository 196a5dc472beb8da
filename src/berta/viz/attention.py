"""`berta attention`: a model's attention for a text, as a PNG grid of heatmaps or a self-contained HTML viewer.

    berta attention --model DIR "The bank raised its rates." --out attention.html
    berta attention --model DIR "A question?" --pair "Its context." --out attention.png --layer 2 --head 5

The weights are the model's own softmax probabilities (`output_attentions=True`): one (seq, seq) map per layer
and head, row = query token (the one attending), column = key token (the one attended to); every row sums to 1.
Layers and heads are numbered from 0, as in `output.attentions[layer][:, head]`.

Labels are the text the token covers, read through the tokenizer's character offsets, so byte-level BPE's `Ġ`
and SentencePiece's `▁` never show, lowercasing and accent stripping are undone, and a piece that continues a
word is written `##piece` in every family. Special tokens keep their names (`[CLS]`, `<s>`).

Merging sub-words (`merge=True`, `--merge-subwords`) follows Clark et al. (2019), "What Does BERT Look At?": the
attention *to* a word is the sum of the attention to its pieces, and the attention *from* a word is the mean over
its pieces of their attention. Rows stay probability distributions (they still sum to 1).

The HTML page holds its data (float16, base64: 2 bytes per weight before base64's 4/3) and its own JavaScript
inline; a Content-Security-Policy forbids every fetch, so it works from a file with no network. It draws a head
view (lines between two token columns; hover a token to see what it attends to, or what attends to it, with exact
weights) and a model view (a thumbnail per layer and head), with a sentence-pair filter.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

_WHITESPACE_LABELS = {"\n": "↵", "\r": "↵", "\t": "⇥"}


@dataclass
class AttentionMaps:
    """The attention of one input: a label per row/column and the (layers, heads, seq, seq) probabilities."""

    tokens: list[str]  # readable label of each token (or word, when merged)
    segments: list[int]  # 0: the text, 1: the pair; a special token belongs to the segment it follows
    special: list[bool]  # special tokens ([CLS], </s>, ...)
    weights: np.ndarray  # (layers, heads, seq, seq) float32; row = query, column = key
    merged: bool = False  # whether sub-word pieces were merged into words
    pieces: list[list[int]] = field(default_factory=list)  # the token indices behind each row

    @property
    def num_layers(self) -> int:
        return int(self.weights.shape[0])

    @property
    def num_heads(self) -> int:
        return int(self.weights.shape[1])


# ------------------------------------------------------------------------------------------------ labels


def _visible(span: str) -> str:
    text = span.strip()
    if text:
        return " ".join(text.split())  # a label is one line
    return "".join(_WHITESPACE_LABELS.get(c, "␣") for c in span[:1]) or "␣"


def _readable_piece(token: str) -> str:
    """A token with no usable offsets: drop the word-start markers of byte-level BPE and SentencePiece."""
    return _visible(token.replace("Ġ", " ").replace("▁", " ").removeprefix("##")) if token else "␣"


def word_groups(encoding: Any) -> list[list[int]]:
    """Token indices grouped into words: consecutive pieces of one word (same segment and word id) join.

    Special tokens stay alone.

    Example:
        >>> from berta import Tokenizer
        >>> word_groups(Tokenizer.from_pretrained("roberta").encode("Hello xylophonists!"))
        [[0], [1], [2, 3, 4, 5], [6], [7]]
    """
    groups: list[list[int]] = []
    previous = None
    for index, (word, sequence, special) in enumerate(
        zip(encoding.word_ids, encoding.sequence_ids, encoding.special_tokens_mask, strict=True)
    ):
        key = None if special or word is None else (sequence, word)
        if key is not None and key == previous:
            groups[-1].append(index)
        else:
            groups.append([index])
        previous = key
    return groups


def token_labels(encoding: Any, text: str, pair: str | None = None, groups: list[list[int]] | None = None) -> list[str]:
    """Readable labels for the tokens (or, given `groups`, the words) of an encoding of `text` (and `pair`).

    A label is the text the token covers (its offsets); a piece that continues a word gets a `##` prefix; special
    tokens keep their names.

    Example:
        >>> from berta import Tokenizer
        >>> encoding = Tokenizer.from_pretrained("roberta").encode("Hello xylophonists!")
        >>> encoding.tokens
        ['<s>', 'Hello', 'Ġx', 'yl', 'ophon', 'ists', '!', '</s>']
        >>> token_labels(encoding, "Hello xylophonists!")
        ['<s>', 'Hello', 'x', '##yl', '##ophon', '##ists', '!', '</s>']
        >>> token_labels(encoding, "Hello xylophonists!", groups=word_groups(encoding))
        ['<s>', 'Hello', 'xylophonists', '!', '</s>']
    """
    sources = (text, pair)
    merged = groups is not None
    if groups is None:
        words = word_groups(encoding)
        starts = {group[0] for group in words}
        groups = [[index] for group in words for index in group]
    labels = []
    for group in groups:
        first, last = group[0], group[-1]
        if encoding.special_tokens_mask[first]:
            labels.append(encoding.tokens[first])
            continue
        source = sources[encoding.sequence_ids[first] or 0] or ""
        start, end = encoding.offsets[first][0], encoding.offsets[last][1]
        if len(group) == 1 and not encoding.tokens[first].strip("▁"):
            label = "␣"  # SentencePiece's lone word marker covers no character (its offsets borrow the next one)
        elif end > start:
            label = _visible(source[start:end])
        else:
            label = _readable_piece(encoding.tokens[first])
        labels.append(label if merged or first in starts else "##" + label)
    return labels


def _segments(encoding: Any) -> list[int]:
    segments, current = [], 0
    for sequence in encoding.sequence_ids:
        if sequence is not None:
            current = sequence
        segments.append(current)
    return segments


def merge_subwords(weights: np.ndarray, groups: list[list[int]]) -> np.ndarray:
    """Attention between words from attention between pieces (Clark et al., 2019; see the module docstring).

    `weights` is (..., seq, seq) with row = query; `groups` are consecutive token indices covering 0..seq-1.
    Keys of a word are summed, queries averaged, so rows still sum to 1.

    Example:
        >>> merge_subwords(np.array([[0.5, 0.25, 0.25], [0.0, 1.0, 0.0], [0.2, 0.2, 0.6]]), [[0], [1, 2]]).round(6)
        array([[0.5, 0.5],
               [0.1, 0.9]])
    """
    seq = weights.shape[-1]
    if weights.shape[-2] != seq or [i for g in groups for i in g] != list(range(seq)):
        raise ValueError(f"groups must cover the {seq} tokens of a (..., {seq}, {seq}) map in order; got "
                         f"weights of shape {tuple(weights.shape)} and {sum(len(g) for g in groups)} grouped tokens")
    starts = np.array([group[0] for group in groups])
    sizes = np.array([len(group) for group in groups], dtype=weights.dtype)
    to_words = np.add.reduceat(weights, starts, axis=-1)  # (..., seq, words): a word's keys summed
    return np.add.reduceat(to_words, starts, axis=-2) / sizes[:, None]  # (..., words, words): queries averaged


# ------------------------------------------------------------------------------------------------ the model


def attention_maps(
    model: nn.Module, tokenizer: Any, text: str, pair: str | None = None, merge: bool = False
) -> AttentionMaps:
    """Run `model` on `text` (and `pair`) and return every layer's attention probabilities with labels.

    Example (`path`: the MiniLM directory):
        >>> maps = attention_maps(berta.load(path), berta.Tokenizer.from_pretrained(path), "The bank is closed.")
        ... # doctest: +SKIP
        >>> maps.weights.shape, maps.tokens[:3]  # doctest: +SKIP
        ((6, 12, 7, 7), ['[CLS]', 'The', 'bank'])
    """
    encoding = tokenizer.encode(text, pair)
    config = model.config
    if len(encoding.ids) > config.max_length:
        raise ValueError(f"the input has {len(encoding.ids)} tokens but the model takes at most {config.max_length}; "
                         "shorten the text")
    device = next(model.parameters()).device
    inputs = {"input_ids": torch.tensor([encoding.ids], device=device)}
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    if tokenizer.has_token_types and config.type_vocab_size > 0:
        inputs["token_type_ids"] = torch.tensor([encoding.type_ids], device=device)
    was_training = model.training
    model.eval()  # dropout would change the probabilities of every layer after the first
    try:
        with torch.inference_mode():
            attentions = model(**inputs, output_attentions=True).attentions
    finally:
        model.train(was_training)
    if not attentions:
        raise ValueError(f"{type(model).__name__} returned no attentions for output_attentions=True")
    weights = torch.stack([layer[0] for layer in attentions]).float().cpu().numpy()  # (layers, heads, seq, seq)
    groups = word_groups(encoding)
    segments, special = _segments(encoding), [bool(s) for s in encoding.special_tokens_mask]
    if merge:
        weights = merge_subwords(weights, groups)
        return AttentionMaps(
            tokens=token_labels(encoding, text, pair, groups), segments=[segments[g[0]] for g in groups],
            special=[special[g[0]] for g in groups], weights=weights, merged=True, pieces=groups,
        )
    return AttentionMaps(tokens=token_labels(encoding, text, pair), segments=segments, special=special,
                         weights=weights, pieces=[[i] for i in range(len(encoding.ids))])


def _check_selection(maps: AttentionMaps, layer: int | None, head: int | None) -> None:
    if layer is not None and not 0 <= layer < maps.num_layers:
        raise ValueError(f"layer {layer} does not exist: the model has layers 0..{maps.num_layers - 1}")
    if head is not None and not 0 <= head < maps.num_heads:
        raise ValueError(f"head {head} does not exist: the model has heads 0..{maps.num_heads - 1}")


# ------------------------------------------------------------------------------------------------ PNG


def render_png(maps: AttentionMaps, layer: int | None = None, head: int | None = None, dpi: int = 100) -> bytes:
    """A PNG of heatmaps: every layer x head, one layer's heads, one head across layers, or one map.

    Colours run from 0 to 1 on one scale for every map (so maps compare); the query tokens are on the y axis.

    Example:
        >>> Path("attention.png").write_bytes(render_png(maps, layer=2, head=5))  # doctest: +SKIP
    """
    figure = _figure(maps, layer, head, dpi)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def _figure(maps: AttentionMaps, layer: int | None, head: int | None, dpi: int = 100) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    _check_selection(maps, layer, head)
    layer_list = list(range(maps.num_layers)) if layer is None else [layer]
    head_list = list(range(maps.num_heads)) if head is None else [head]
    rows, columns, n = len(layer_list), len(head_list), len(maps.tokens)
    single = rows * columns == 1
    # Cell sizes in inches: the fewer the maps, the larger each (labels sit on the outer axes of a grid only).
    if single:
        cell = min(max(0.16 * n, 3.0), 30.0)
    elif rows * columns <= 12:
        cell = min(max(0.12 * n, 2.2), 10.0)
    else:
        cell = min(max(0.09 * n, 1.6), 6.0)
    font = max(6.0, min(10.0, 0.8 * cell * 72 / max(n, 1)))  # points; below 6 nobody reads it
    step = max(1, int(np.ceil(n * font * 1.1 / (cell * 72) - 1e-9)))  # show every step-th label when they cannot fit
    margin = 0.6 * font / 72 * max(len(t) for t in maps.tokens) + 0.6  # a character is about 0.6 em wide
    figure = Figure(figsize=(columns * cell + margin + 1.0, rows * cell + margin + 0.6), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(rows, columns, squeeze=False)
    pair_start = maps.segments.index(1) if 1 in maps.segments else None
    ticks = list(range(0, n, step))
    labels = [maps.tokens[i] for i in ticks]
    image = None
    for r, layer_index in enumerate(layer_list):
        for c, head_index in enumerate(head_list):
            axes = grid[r][c]
            image = axes.imshow(maps.weights[layer_index, head_index], cmap="Blues", vmin=0.0, vmax=1.0,
                                interpolation="nearest", aspect="equal")
            if pair_start is not None:  # where the pair's tokens begin, on both axes
                axes.axhline(pair_start - 0.5, color="#d9480f", linewidth=0.8)
                axes.axvline(pair_start - 0.5, color="#d9480f", linewidth=0.8)
            axes.set_xticks(ticks if r == rows - 1 else [])
            axes.set_yticks(ticks if c == 0 else [])
            if r == rows - 1:
                axes.set_xticklabels(labels, rotation=90, fontsize=font)
            if c == 0:
                axes.set_yticklabels(labels, fontsize=font)
            if single:
                axes.set_title(f"layer {layer_index}, head {head_index}", fontsize=10)
            else:
                if r == 0:
                    axes.set_title(f"head {head_index}", fontsize=9)
                if c == 0:
                    axes.set_ylabel(f"layer {layer_index}", fontsize=9)
    figure.supxlabel("key (attended to)", fontsize=9)
    figure.supylabel("query (attending)", fontsize=9)
    figure.colorbar(image, ax=grid, shrink=0.8, fraction=0.03, pad=0.01)
    return figure


# ------------------------------------------------------------------------------------------------ HTML


def render_html(maps: AttentionMaps, title: str = "berta attention", layer: int = 0, head: int | None = 0) -> str:
    """One self-contained HTML page (no network) that draws `maps`; it opens on `layer` and `head` (None: all).

    Example:
        >>> Path("attention.html").write_text(render_html(maps, title="MiniLM"), encoding="utf-8")  # doctest: +SKIP
    """
    _check_selection(maps, layer, head)
    weights = np.ascontiguousarray(maps.weights, dtype="<f2")  # float16, little-endian: 2 bytes per weight
    payload = {
        "tokens": maps.tokens, "segments": maps.segments, "special": maps.special, "merged": maps.merged,
        "layers": maps.num_layers, "heads": maps.num_heads, "size": len(maps.tokens), "layer": layer, "head": head,
        "weights": base64.b64encode(weights.tobytes()).decode("ascii"),
    }
    # "<" escaped so no token ("</s>", "</script>") can close the data's <script> element.
    data = json.dumps(payload, ensure_ascii=False).replace("<", "\\u003c")
    template = resources.files("berta.viz").joinpath("attention.html").read_text(encoding="utf-8")
    return template.replace("/*TITLE*/", html.escape(title)).replace("/*DATA*/", data)


# ------------------------------------------------------------------------------------------------ entry points


def attention_html(
    model: nn.Module, tokenizer: Any, text: str, pair: str | None = None, *, merge: bool = False,
    title: str = "berta attention", layer: int = 0, head: int | None = 0,
) -> str:
    """The self-contained HTML viewer of `model`'s attention on `text` (and `pair`), as a string.

    Example:
        >>> page = attention_html(berta.load(path), berta.Tokenizer.from_pretrained(path), "The bank is closed.")
        ... # doctest: +SKIP
    """
    return render_html(attention_maps(model, tokenizer, text, pair, merge), title, layer, head)


def attention_png(
    model: nn.Module, tokenizer: Any, text: str, pair: str | None = None, *, merge: bool = False,
    layer: int | None = None, head: int | None = None,
) -> bytes:
    """PNG heatmaps of `model`'s attention on `text` (and `pair`): all layers x heads, or the ones chosen.

    Example:
        >>> png = attention_png(berta.load(path), berta.Tokenizer.from_pretrained(path), "Hi there.", layer=0)
        ... # doctest: +SKIP
    """
    return render_png(attention_maps(model, tokenizer, text, pair, merge), layer, head)


@dataclass
class AttentionSettings:
    """Settings of `berta attention`."""

    text: str = field(metadata={"positional": True, "help": "the text whose attention is drawn"})
    model: str = field(metadata={"help": "model directory with its tokenizer"})
    output: Path = field(metadata={"aliases": ("--out",),
                                   "help": "FILE.png (heatmaps) or FILE.html (interactive viewer, works offline)"})
    pair: str | None = field(default=None, metadata={"help": "second text of a sentence pair"})
    layer: int | None = field(default=None, metadata={"min": 0,
        "help": "layer to draw, from 0 (PNG default: all; HTML: the layer the page opens on, default 0)"})
    head: int | None = field(default=None, metadata={"min": 0,
        "help": "head to draw, from 0 (PNG default: all; HTML: the head the page opens on, default all)"})
    merge_subwords: bool = field(default=False, metadata={
        "help": "merge sub-word pieces into words (keys summed, queries averaged)"})
    device: str = field(default="auto", metadata={"help": "auto (GPU when there is one), cpu, cuda, cuda:1, ..."})


def attention(settings: AttentionSettings) -> Path:
    """Draw a model's attention for a text: PNG heatmaps or a self-contained HTML viewer.

    Example:
        >>> attention(AttentionSettings(text="The bank is closed.", model="runs/sst/model", output=Path("a.html")))
        ... # doctest: +SKIP
    """
    from berta.checkpoints.hf import load
    from berta.io import atomic_write_bytes, atomic_write_text
    from berta.tokenizer import Tokenizer

    out = Path(settings.output)
    kind = out.suffix.lower()
    if kind not in (".png", ".html", ".htm"):
        raise ValueError(f"--out {out}: the suffix must be .png or .html, got {out.suffix!r}")
    from berta.device import resolve_device

    model = load(settings.model, device=resolve_device(settings.device))
    tokenizer = Tokenizer.from_pretrained(settings.model)
    maps = attention_maps(model, tokenizer, settings.text, settings.pair, settings.merge_subwords)
    _check_selection(maps, settings.layer, settings.head)
    if kind == ".png":
        atomic_write_bytes(out, render_png(maps, settings.layer, settings.head))
    else:
        title = "berta attention: " + "/".join(Path(settings.model).resolve().parts[-2:])
        atomic_write_text(out, render_html(maps, title, settings.layer or 0, settings.head))
    print(f"berta: attention of {len(maps.tokens)} {'words' if maps.merged else 'tokens'}, "
          f"{maps.num_layers} layers x {maps.num_heads} heads -> {out}")
    return out
