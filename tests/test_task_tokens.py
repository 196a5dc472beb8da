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


def test_long_sentences_are_windowed_each_word_labelled_and_read_once(roberta):
    words = [f"w{i % 7}" for i in range(40)]
    tags = [TAGS[i % 4] for i in range(40)]
    sentence = Sentence(words, tags, "s.conll", 1)
    task = TokenTask(roberta, id2label=TAGS, max_length=16)
    features = task.featurize([sentence])
    assert len(features) > 3 and all(len(f["input_ids"]) <= 16 for f in features)
    label2id = {v: k for k, v in TAGS.items()}
    labelled = [(f["word_ids"][p], label) for f in features for p, label in enumerate(f["labels"]) if label != IGNORE]
    assert labelled == [(i, label2id[t]) for i, t in enumerate(tags)]  # every word once, in order

    class ByToken:
        """A stand-in model whose logits depend only on each token's id, so windows cannot change them."""

        def __init__(self):
            import torch

            self.torch = torch
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def eval(self):
            return self

        def parameters(self):
            return iter([self.weight])

        def __call__(self, input_ids, attention_mask, token_type_ids=None):
            return type("Output", (), {"logits": self.torch.nn.functional.one_hot(input_ids % 4, 4).float()})()

    (prediction,) = task.predict(ByToken(), [sentence])
    whole = roberta([words], is_split_into_words=True, padding=False)
    firsts = {}
    for position, word in enumerate(whole.word_ids(0)):
        if word is not None:
            firsts.setdefault(word, whole["input_ids"][0][position])
    assert prediction["tags"] == [TAGS[firsts[i] % 4] for i in range(40)]


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
