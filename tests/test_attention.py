"""berta.viz.attention: readable labels, sub-word merging, the probabilities against `transformers`, the PNG."""

from __future__ import annotations

import io
import unicodedata

import numpy as np
import pytest
import torch
import transformers
from conftest import minilm_directory, train_sentencepiece

import berta
from berta import cli
from berta.tokenizer import Tokenizer
from berta.viz import attention as viz

TEXT = "The riverbank flooded; xylophonists played on anyway."
PAIR = "Who kept playing?"


@pytest.fixture(scope="module")
def minilm():
    directory = minilm_directory()
    return berta.load(directory).eval(), Tokenizer.from_pretrained(directory)


@pytest.fixture(scope="module")
def reference():
    """transformers' BertModel on the same weights, eager attention (which returns the probabilities)."""
    model = transformers.BertModel.from_pretrained(minilm_directory(), attn_implementation="eager").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_directory())

    def probabilities(text, pair=None):
        inputs = tokenizer(text, pair, return_tensors="pt")
        with torch.no_grad():
            attentions = model(**inputs, output_attentions=True).attentions
        return torch.stack([a[0] for a in attentions]).numpy()  # (layers, heads, seq, seq)

    return probabilities


@pytest.fixture(scope="module")
def sentencepiece_tokenizer(tmp_path_factory):
    """A tiny unigram SentencePiece model (XLM-R's tokenizer type) and its file."""
    directory = tmp_path_factory.mktemp("spm")
    train_sentencepiece(directory)
    return Tokenizer.from_pretrained(directory), directory / "sentencepiece.bpe.model"


# ------------------------------------------------------------------------------------------------ labels


def _pieces(labels):
    return [label.removeprefix("##") for label in labels]


def test_byte_level_labels_are_the_decoded_tokens_without_markers(roberta):
    text = "Héllo worldly xylophonists, it's 1818!"
    encoding = roberta.encode(text)
    labels = viz.token_labels(encoding, text)
    assert not any("Ġ" in label or "Ã" in label for label in labels)
    assert labels[0] == "<s>" and labels[-1] == "</s>"
    # The reference: GPT-2's byte decoder on each token alone (tokenizers' ByteLevel decoder).
    decoded = [roberta.backend.decode([i], skip_special_tokens=False).strip() for i in encoding.ids]
    assert _pieces(labels[1:-1]) == decoded[1:-1]
    continuation = [label.startswith("##") for label in labels]
    previous_word = [None, *encoding.word_ids[:-1]]
    assert continuation == [w is not None and w == p for w, p in zip(encoding.word_ids, previous_word, strict=True)]
    assert "##" in "".join(labels)  # the text has words of several pieces
    merged = viz.token_labels(encoding, text, groups=viz.word_groups(encoding))
    assert merged == ["<s>", "Héllo", "worldly", "xylophonists", ",", "it", "'s", "1818", "!", "</s>"]


def test_sentencepiece_labels_drop_the_word_marker(sentencepiece_tokenizer):
    import sentencepiece

    tokenizer, model_file = sentencepiece_tokenizer
    text = "the lazy fox springt über den Hund"
    encoding = tokenizer.encode(text, "le chien")
    labels = viz.token_labels(encoding, text, "le chien")
    assert not any("▁" in label for label in labels)
    processor = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    pieces = processor.encode(text, out_type=str) + processor.encode("le chien", out_type=str)
    expected = [piece.replace("▁", "") or "␣" for piece in pieces]
    assert _pieces([label for label, s in zip(labels, encoding.special_tokens_mask, strict=True) if not s]) == expected
    assert viz.token_labels(encoding, text, "le chien", viz.word_groups(encoding)) == [
        "<s>", "the", "lazy", "fox", "springt", "über", "den", "Hund", "</s>", "</s>", "le", "chien", "</s>"]


def test_wordpiece_labels_keep_the_original_case_and_accents(bert):
    text = "Café owners UNDERESTIMATED it"
    encoding = bert.encode(text)
    labels = viz.token_labels(encoding, text)

    def uncased(label):  # what BERT's uncased normalizer does: lowercase, strip accents
        return "".join(c for c in unicodedata.normalize("NFD", label.lower()) if not unicodedata.combining(c))

    assert [uncased(label) for label in _pieces(labels)][1:-1] == [t.removeprefix("##") for t in encoding.tokens][1:-1]
    assert labels[1] == "Café" and labels[-1] == "[SEP]"
    assert [t.startswith("##") for t in encoding.tokens] == [label.startswith("##") for label in labels]
    assert viz.token_labels(encoding, text, groups=viz.word_groups(encoding)) == [
        "[CLS]", "Café", "owners", "UNDERESTIMATED", "it", "[SEP]"]


def test_whitespace_tokens_get_visible_labels(roberta):
    text = "a  b\nc"
    labels = viz.token_labels(roberta.encode(text), text)
    assert labels == ["<s>", "a", "␣", "b", "↵", "c", "</s>"]


# ------------------------------------------------------------------------------------------------ merging


def test_merge_subwords_sums_keys_and_averages_queries():
    generator = np.random.default_rng(0)
    scores = generator.normal(size=(2, 3, 7, 7))
    weights = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
    groups = [[0], [1, 2, 3], [4], [5, 6]]
    merged = viz.merge_subwords(weights, groups)
    assert merged.shape == (2, 3, 4, 4)
    for a, queries in enumerate(groups):  # Clark et al. (2019), written out
        for b, keys in enumerate(groups):
            expected = np.mean([weights[..., q, keys].sum(-1) for q in queries], axis=0)
            np.testing.assert_allclose(merged[..., a, b], expected, rtol=1e-12)
    np.testing.assert_allclose(merged.sum(-1), 1.0, rtol=1e-12)
    with pytest.raises(ValueError, match=r"groups must cover the 7 tokens"):
        viz.merge_subwords(weights, [[0], [2, 3]])


# ------------------------------------------------------------------------------------------------ the model


def test_probabilities_equal_transformers_on_minilm(minilm, reference):
    model, tokenizer = minilm
    maps = viz.attention_maps(model, tokenizer, TEXT, PAIR)
    expected = reference(TEXT, PAIR)
    assert maps.weights.shape == expected.shape == (6, 12, len(maps.tokens), len(maps.tokens))
    np.testing.assert_allclose(maps.weights, expected, atol=2e-6)
    np.testing.assert_allclose(maps.weights.sum(-1), 1.0, atol=1e-5)
    sep = maps.tokens.index("[SEP]")
    assert maps.segments == [0] * (sep + 1) + [1] * (len(maps.tokens) - sep - 1)
    assert maps.special == [t in ("[CLS]", "[SEP]") for t in maps.tokens]

    merged = viz.attention_maps(model, tokenizer, TEXT, PAIR, merge=True)
    assert "xylophonists" in merged.tokens and "riverbank" in merged.tokens
    groups = merged.pieces
    assert [i for g in groups for i in g] == list(range(len(maps.tokens)))
    a, b = merged.tokens.index("xylophonists"), merged.tokens.index("riverbank")
    expected_ab = expected[:, :, groups[a]][..., groups[b]].sum(-1).mean(-1)  # (layers, heads)
    np.testing.assert_allclose(merged.weights[:, :, a, b], expected_ab, atol=2e-6)
    assert model.training is False


def test_too_long_input_is_a_clear_error(minilm):
    model, tokenizer = minilm
    with pytest.raises(ValueError, match=r"the input has 5\d\d tokens but the model takes at most 512"):
        viz.attention_maps(model, tokenizer, "word " * 520)


# ------------------------------------------------------------------------------------------------ PNG


def _figure_maps(maps, layer=None, head=None):
    figure = viz._figure(maps, layer, head)
    images = [axes.images[0] for axes in figure.axes if axes.images]
    return figure, images


def test_png_draws_the_probabilities_with_readable_labels(minilm, reference):
    model, tokenizer = minilm
    maps = viz.attention_maps(model, tokenizer, TEXT)
    figure, images = _figure_maps(maps)
    assert len(images) == 6 * 12
    expected = reference(TEXT)
    np.testing.assert_allclose(np.asarray(images[12 * 2 + 5].get_array()), expected[2, 5], atol=2e-6)
    first = figure.axes[0]
    assert [t.get_text() for t in first.get_yticklabels()] == maps.tokens

    figure, images = _figure_maps(maps, layer=3, head=7)
    assert len(images) == 1
    np.testing.assert_allclose(np.asarray(images[0].get_array()), expected[3, 7], atol=2e-6)
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == maps.tokens
    assert figure.axes[0].get_title() == "layer 3, head 7"

    png = viz.render_png(maps, layer=3, head=7)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(io.BytesIO(png)).shape
    assert 400 < width < 2000 and 400 < height < 2000
    _, row = _figure_maps(maps, layer=3)
    assert len(row) == 12
    figure, _ = _figure_maps(viz.attention_maps(model, tokenizer, TEXT, PAIR), layer=0, head=0)
    (across, down) = figure.axes[0].lines  # the text / pair boundary, after the first [SEP]
    assert across.get_ydata()[0] == down.get_xdata()[0] == maps.tokens.index("[SEP]") + 0.5
    with pytest.raises(ValueError, match=r"layer 6 does not exist: the model has layers 0..5"):
        viz.render_png(maps, layer=6)
    with pytest.raises(ValueError, match=r"head 12 does not exist: the model has heads 0..11"):
        viz.render_html(maps, head=12)


def test_command_line_writes_png_and_html(tmp_path, capsys):
    directory = str(minilm_directory())
    cli.main(["attention", "--model", directory, TEXT, "--out", str(tmp_path / "a.png"), "--layer", "1",
              "--merge-subwords"])
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    assert "words, 6 layers x 12 heads" in capsys.readouterr().out
    cli.main(["attention", "--model", directory, TEXT, "--pair", PAIR, "--out", str(tmp_path / "a.html")])
    page = (tmp_path / "a.html").read_text(encoding="utf-8")
    assert "<script src" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page
    with pytest.raises(SystemExit, match=r"the suffix must be .png or .html"):
        cli.main(["attention", "--model", directory, TEXT, "--out", str(tmp_path / "a.jpg")])
    with pytest.raises(SystemExit, match=r"head 20 does not exist"):
        cli.main(["attention", "--model", directory, TEXT, "--out", str(tmp_path / "b.png"), "--head", "20"])
    assert not (tmp_path / "b.png").exists()
