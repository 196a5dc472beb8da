"""Token classification: label alignment on sub-tokens (WordPiece and pre-split byte-level BPE), entity spans
with character offsets, scheme detection, and bad input."""


import numpy as np
import pytest

from berta.config import IGNORE_INDEX as IGNORE
from berta.data.readers import Sentence
from berta.tasks.tokens import TokenTask, detect_scheme, entity_spans, word_offsets

SENTENCE = Sentence(
    ["Zoë", "Nakamura-Lindqvist", "visited", "Reykjavík", "."], ["B-PER", "I-PER", "O", "B-LOC", "O"], "s.conll", 1
)
TAGS = {0: "B-LOC", 1: "B-PER", 2: "I-PER", 3: "O"}


@pytest.mark.parametrize("family", ["roberta", "bert"])
def test_first_sub_token_carries_the_word_label(family, request):
    tokenizer = request.getfixturevalue(family)
    task = TokenTask(tokenizer, id2label=TAGS)
    (feature,) = task.featurize([SENTENCE])
    word_ids, labels = feature["word_ids"], feature["labels"]
    assert len(word_ids) > len(SENTENCE.tokens) + 4  # words split into many sub-tokens
    label2id = {v: k for k, v in TAGS.items()}
    firsts = [i for i, w in enumerate(word_ids) if w is not None and (i == 0 or word_ids[i - 1] != w)]
    assert [word_ids[i] for i in firsts] == list(range(len(SENTENCE.tokens)))
    assert [labels[i] for i in firsts] == [label2id[t] for t in SENTENCE.tags]
    assert all(labels[i] == IGNORE for i in range(len(labels)) if i not in firsts)


def test_pre_split_byte_level_tokens_match_the_running_text(roberta):
    # Pre-split words after the first carry the space they have in the running text, so the tokens of
    # the sentence equal the tokens of the joined text.
    task = TokenTask(roberta, id2label=TAGS)
    (feature,) = task.featurize([SENTENCE])
    assert feature["input_ids"] == roberta.encode(" ".join(SENTENCE.tokens)).ids


def test_label_all_tokens_continues_b_as_i(bert):
    task = TokenTask(bert, id2label=TAGS, label_all_tokens=True)
    (feature,) = task.featurize([SENTENCE])
    names = [TAGS[x] if x != IGNORE else None for x in feature["labels"]]
    by_word: dict[int, list[str]] = {}
    for word, name in zip(feature["word_ids"], names, strict=True):
        if word is not None:
            by_word.setdefault(word, []).append(name)
    assert by_word[1][0] == "I-PER" and set(by_word[1]) == {"I-PER"}
    assert by_word[0][0] == "B-PER" and set(by_word[0][1:]) <= {"I-PER"}
    assert by_word[3][0] == "B-LOC" and set(by_word[3][1:]) <= {"B-LOC"}  # no I-LOC in the tag set: stays B-LOC


def test_entity_spans_have_character_offsets():
    words = ["Zoë", "Nakamura", "flew", "to", "New", "York", "City"]
    tags = ["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC", "I-LOC"]
    text = " ".join(words)
    spans = entity_spans(words, tags)
    assert [(s["type"], text[s["start"] : s["end"]]) for s in spans] == [("PER", "Zoë Nakamura"),
                                                                         ("LOC", "New York City")]
    assert [(s["first_word"], s["last_word"]) for s in spans] == [(0, 1), (4, 6)]
    assert word_offsets(["a", "bc"]) == [(0, 1), (2, 4)]
    assert entity_spans(["A", "B"], ["S-PER", "S-LOC"], "BIOES")[1]["text"] == "B"


def test_scheme_detection():
    assert detect_scheme(["O", "B-PER", "I-PER"]) == "IOB2"
    assert detect_scheme(["O", "B-PER", "E-PER", "S-LOC"]) == "BIOES"
    assert detect_scheme(["NOUN", "VERB", "O"]) is None


def test_predictions_per_word_from_the_first_sub_token(bert):
    task = TokenTask(bert, id2label=TAGS)
    (feature,) = task.featurize([SENTENCE])
    label2id = {v: k for k, v in TAGS.items()}

    class Oracle:
        """A stand-in model whose logits put each word's gold tag on its first sub-token only."""

        def __init__(self):
            import torch

            self.torch = torch
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def eval(self):
            return self

        def parameters(self):
            return iter([self.weight])

        def __call__(self, input_ids, attention_mask, token_type_ids=None):
            logits = np.zeros((1, input_ids.shape[1], len(TAGS)), dtype=np.float32)
            previous = None
            for i, word in enumerate(feature["word_ids"]):
                tag = label2id["O"]
                if word is not None and word != previous:
                    tag = label2id[SENTENCE.tags[word]]
                logits[0, i, tag] = 1.0
                previous = word
            return type("Output", (), {"logits": self.torch.from_numpy(logits)})()

    (prediction,) = task.predict(Oracle(), [SENTENCE])
    assert prediction["tags"] == SENTENCE.tags
    assert [(e["type"], e["text"]) for e in prediction["entities"]] == [("PER", "Zoë Nakamura-Lindqvist"),
                                                                       ("LOC", "Reykjavík")]
    result = task.score([SENTENCE], [prediction])
    assert result["f1"] == 1.0 and result["number"] == 2


def test_words_beyond_max_length_are_tagged_o_with_a_warning(roberta):
    sentence = Sentence(["word"] * 40, ["O"] * 40, "s.conll", 1)
    task = TokenTask(roberta, id2label=TAGS, max_length=16)

    class Constant:
        def __init__(self):
            import torch

            self.torch = torch
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def eval(self):
            return self

        def parameters(self):
            return iter([self.weight])

        def __call__(self, input_ids, attention_mask, token_type_ids=None):
            logits = self.torch.zeros(*input_ids.shape, len(TAGS))
            logits[..., 1] = 1.0  # B-PER everywhere the model sees
            return type("Output", (), {"logits": logits})()

    with pytest.warns(UserWarning, match="26 words lie beyond max_length=16"):
        (prediction,) = task.predict(Constant(), [sentence])
    assert prediction["tags"][:14] == ["B-PER"] * 14 and prediction["tags"][14:] == ["O"] * 26


def test_conll_line_with_wrong_field_count_names_file_and_line(tmp_path, roberta):
    path = tmp_path / "train.conll"
    path.write_text("EU B-ORG\nrejects O\n\nGerman B-MISC\ncall O extra\n")
    with pytest.raises(ValueError, match=r"train\.conll line 5: 3 fields, expected 2"):
        TokenTask(roberta).read(path)


def test_unknown_tag_at_evaluation_names_file_and_line(tmp_path, roberta):
    train, dev = tmp_path / "train.conll", tmp_path / "dev.conll"
    train.write_text("EU B-ORG\nrejects O\n")
    dev.write_text("Paris B-LOC\nsleeps O\n\nBerlin B-GPE\n")
    task = TokenTask(roberta)
    task.fit_labels(task.read(train))
    sentences = task.read(dev)
    with pytest.raises(ValueError, match=r"dev\.conll line 1: label 'B-LOC' is not one of the 2 labels"):
        task.score(sentences, [{"tags": s.tags} for s in sentences])
