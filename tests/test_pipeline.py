"""berta.pipeline against its references on the same saved models: sentence-transformers for `embed` (real
MiniLM weights), transformers' text-classification, token-classification (every aggregation) and fill-mask
pipelines, and a span search over transformers' QA logits written here for `answer`."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import minilm_directory

import berta
from berta.tokenizer import Tokenizer

TAGS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
TEXTS = [
    "Zoë Nakamura-Lindqvist flew from Reykjavík to New York on Tuesday.",
    "",
    "Ada Lovelace wrote the first program; Charles Babbage built the engine 🦄.",
    "ok",
    "São Paulo, Zürich and Ulaanbaatar are cities (well-known ones).",
]


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def save_model(directory: Path, tokenizer: Tokenizer, task: str, id2label=None, problem_type=None,
               head_std: float = 0.3) -> Path:
    """A freshly initialised tiny model for `task` in `tokenizer`'s family, its head weights scaled so that
    predictions differ from token to token, saved with its tokenizer."""
    if tokenizer.family == "bert":
        config = berta.EncoderConfig.preset("tiny").replace(
            family="bert", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_id, position_offset=0,
            type_vocab_size=2, layer_norm_eps=1e-12, bos_token_id=None, eos_token_id=None, max_positions=128)
    else:
        config = berta.EncoderConfig.preset("tiny").replace(vocab_size=len(tokenizer))
    config = config.replace(id2label=id2label or {}, problem_type=problem_type)
    torch.manual_seed(0)
    model = berta.create(config, task)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not name.startswith("encoder.") and parameter.dim() == 2:
                parameter.normal_(0, head_std)
    model.save(directory)
    tokenizer.save(directory)
    return directory


def close(ours: list, theirs: list) -> None:
    """Entity lists equal: the same keys and values, scores to 1e-4."""
    assert len(ours) == len(theirs), (ours, theirs)
    for a, b in zip(ours, theirs, strict=True):
        b = {k: v for k, v in b.items()}
        assert set(a) == set(b), (a, b)
        for key in a:
            if key == "score":
                assert a[key] == pytest.approx(float(b[key]), abs=1e-4), (a, b)
            else:
                assert a[key] == b[key], (key, a, b)


@pytest.fixture(scope="module", params=["roberta", "bert"])
def family(request) -> Tokenizer:
    return Tokenizer.from_pretrained("roberta") if request.param == "roberta" else Tokenizer.from_pretrained(
        minilm_directory())


@pytest.fixture(scope="module")
def tokens_model(family, tmp_path_factory) -> Path:
    return save_model(tmp_path_factory.mktemp(f"tokens-{family.family}"), family, "tokens", TAGS)


@pytest.mark.parametrize("aggregation", ["none", "simple", "first", "average", "max"])
def test_tag_equals_transformers_token_classification(tokens_model, aggregation):
    from transformers import pipeline as hf_pipeline

    reference = hf_pipeline("token-classification", model=str(tokens_model), aggregation_strategy=aggregation,
                            device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers warns about its word heuristic for BPE
        expected = [reference(text) if text else [] for text in TEXTS]
    ours = berta.pipeline(tokens_model, device="cpu").tag(TEXTS, aggregation=aggregation)
    assert sum(len(e) for e in expected) > 5  # the scaled head predicts entities
    for mine, theirs in zip(ours, expected, strict=True):
        close(mine, theirs)


def test_tag_windows_long_texts_with_offsets_into_the_input(tokens_model):
    from transformers import AutoModelForTokenClassification

    from berta.tasks.tokens import token_windows

    pipe = berta.pipeline(tokens_model, device="cpu")
    long = " ".join(TEXTS[0] for _ in range(30))  # far beyond the 128-token window
    encoding = pipe.tokenizer.encode(long)
    assert len(encoding.ids) > 3 * pipe.max_length
    (tokens,) = pipe.tag([long], aggregation="none")
    assert tokens[-1]["end"] > len(long) - 10  # the end of the text is tagged too
    for token in tokens:  # offsets point into the input
        assert long[token["start"] : token["end"]].strip()
    # The first and the last window, run in transformers: each token owned by them gets their prediction.
    reference = AutoModelForTokenClassification.from_pretrained(tokens_model).eval()
    content, offsets = encoding.ids[1:-1], encoding.offsets[1:-1]
    windows = token_windows(len(content), pipe.max_length - 2)
    by_start = {t["start"]: t for t in tokens}
    for start, end, own_start, own_end in (windows[0], windows[-1]):
        ids = torch.tensor([[encoding.ids[0], *content[start:end], encoding.ids[-1]]])
        with torch.no_grad():
            probabilities = reference(input_ids=ids).logits[0, 1:-1].softmax(-1)
        for position in range(own_start, own_end):
            label = TAGS[int(probabilities[position - start].argmax())]
            found = by_start.get(offsets[position][0])
            if label == "O":
                assert found is None or found["index"] != position + 1
            else:
                assert found["entity"] == label
                assert found["score"] == pytest.approx(float(probabilities[position - start].max()), abs=1e-4)


@pytest.mark.parametrize("problem_type,labels", [
    ("single_label_classification", {0: "negative", 1: "neutral", 2: "positive"}),
    ("multi_label_classification", {0: "toxic", 1: "funny", 2: "long"}),
    ("regression", {0: "score"}),
])
def test_classify_equals_transformers_text_classification(problem_type, labels, tmp_path):
    from transformers import pipeline as hf_pipeline

    directory = save_model(tmp_path / "model", Tokenizer.from_pretrained(minilm_directory()), "classification",
                           labels, problem_type)
    reference = hf_pipeline("text-classification", model=str(directory), device="cpu")
    pipe = berta.pipeline(directory, device="cpu")
    for top_k in (1, None):
        expected = reference(TEXTS, top_k=top_k)
        ours = pipe.classify(TEXTS, top_k=top_k)
        for mine, theirs in zip(ours, expected, strict=True):
            close(mine, theirs if isinstance(theirs, list) else [theirs])
    pairs = ["a second text", "a pair for the empty text", "and another", "x", "pairs"]
    expected = [reference({"text": t, "text_pair": p}, top_k=None) for t, p in zip(TEXTS, pairs, strict=True)]
    for mine, theirs in zip(pipe.classify(TEXTS, pairs, top_k=None), expected, strict=True):
        close(mine, theirs)
    expected = reference(TEXTS, top_k=2, function_to_apply="sigmoid")
    for mine, theirs in zip(pipe.classify(TEXTS, top_k=2, function_to_apply="sigmoid"), expected, strict=True):
        close(mine, theirs)


def test_fill_mask_equals_transformers_fill_mask(tmp_path):
    from transformers import pipeline as hf_pipeline

    directory = save_model(tmp_path / "mlm", Tokenizer.from_pretrained("roberta"), "masked-lm", head_std=0.02)
    reference = hf_pipeline("fill-mask", model=str(directory), device="cpu")
    texts = ["The capital of France is <mask>.", "<mask> and <mask> went up the hill.", "Zoë said <mask>"]
    pipe = berta.pipeline(directory, device="cpu")
    ours = pipe.fill_mask(texts, top_k=4)
    for text, mine in zip(texts, ours, strict=True):
        theirs = reference(text, top_k=4)
        theirs = [theirs] if isinstance(theirs[0], dict) else theirs  # one mask: transformers drops a level
        assert len(mine) == len(theirs)
        for a, b in zip(mine, theirs, strict=True):
            close(a, b)
    targets = [" Paris", " London", "Rome"]
    (mine,) = pipe.fill_mask([texts[0]], top_k=3, targets=targets)
    close(mine[0], reference(texts[0], top_k=3, targets=targets))
    with pytest.raises(ValueError, match="text 1 .* holds no mask token"):
        pipe.fill_mask(["no mask here"])


def reference_spans(start: np.ndarray, end: np.ndarray, context_tokens: list[int], max_answer_length: int
                    ) -> tuple[int, int, float]:
    """Exhaustive search: the context-token span (s <= e, at most max_answer_length long) with the largest
    start + end logit."""
    best = (0, 0, -np.inf)
    for s in context_tokens:
        for e in context_tokens:
            if s <= e < s + max_answer_length and start[s] + end[e] > best[2]:
                best = (s, e, float(start[s] + end[e]))
    return best


def test_answer_equals_an_exhaustive_span_search_over_transformers_logits(tmp_path):
    from transformers import AutoModelForQuestionAnswering

    tokenizer = Tokenizer.from_pretrained("roberta")
    directory = save_model(tmp_path / "qa", tokenizer, "qa", head_std=1.0)
    reference = AutoModelForQuestionAnswering.from_pretrained(directory).eval()
    questions = ["Who flew to New York?", "What did Ada write?", "Where?"]
    contexts = [TEXTS[0], TEXTS[2], TEXTS[4]]
    ours = berta.pipeline(directory, device="cpu").answer(questions, contexts, max_answer_length=5, doc_stride=32)
    for question, context, mine in zip(questions, contexts, ours, strict=True):
        batch = tokenizer([question], [context], return_tensors="pt")
        with torch.no_grad():
            output = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        in_context = [i for i, s in enumerate(batch.sequence_ids(0)) if s == 1]
        s, e, score = reference_spans(output.start_logits[0].numpy(), output.end_logits[0].numpy(), in_context, 5)
        offsets = batch["offset_mapping"][0].tolist()
        start, stop = offsets[s][0], offsets[e][1]
        assert (mine["start"], mine["end"]) == (start, stop)
        assert mine["answer"] == context[start:stop].strip()
        assert mine["score"] == pytest.approx(score, abs=1e-4)


def test_answer_long_context_top_k_and_null(tmp_path):
    tokenizer = Tokenizer.from_pretrained("roberta")
    pipe = berta.pipeline(save_model(tmp_path / "qa", tokenizer, "qa", head_std=1.0), device="cpu")
    context = " ".join(TEXTS[0] for _ in range(10))
    with pytest.warns(UserWarning, match="doc_stride 128 does not fit"):
        (spans,) = pipe.answer(["Who?"], [context], top_k=3)
    assert len(spans) == 3 and spans[0]["score"] >= spans[1]["score"] >= spans[2]["score"]
    for span in spans:
        assert context[span["start"] : span["end"]] == span["answer"]
    (empty,) = pipe.answer(["Who?"], [""], doc_stride=16)
    assert empty == {"answer": "", "score": -1e9, "start": -1, "end": -1}
    (null,) = pipe.answer(["Who?"], [TEXTS[0]], doc_stride=16, handle_impossible=True, top_k=2)
    assert len(null) == 2 and (null[0]["answer"] == "") == (null[0]["start"] == -1)


def test_embed_equals_sentence_transformers_on_minilm():
    from sentence_transformers import SentenceTransformer

    directory = minilm_directory()
    texts = [*TEXTS, "word " * 400]  # the last is beyond sentence_bert_config's max_seq_length of 256
    expected = SentenceTransformer(str(directory), device="cpu").encode(texts)
    pipe = berta.pipeline(directory, device="cpu", batch_size=4)
    with pytest.warns(UserWarning, match="1 of 6 texts are longer than 256 tokens"):
        ours = pipe.embed(texts)
    assert ours.shape == expected.shape == (6, 384) and ours.dtype == np.float32
    cosine = (ours * expected).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.99999
    assert np.linalg.norm(ours, axis=1) == pytest.approx(np.ones(6), abs=1e-5)  # the Normalize module
    raw = pipe.embed(TEXTS[:1], pooling="cls", normalize=False)
    hidden = pipe.model(**pipe.tokenizer(TEXTS[:1], return_tensors="pt").model_inputs()).last_hidden_state
    assert raw[0] == pytest.approx(hidden[0, 0].detach().numpy(), abs=1e-5)
    assert pipe.embed([]).shape == (0, 384)
    half = berta.pipeline(directory, device="cpu", dtype="bfloat16").embed(texts[:3])
    assert half.dtype == np.float32 and (half * ours[:3]).sum(1) == pytest.approx(np.ones(3), abs=2e-2)


def test_a_method_the_task_does_not_serve_names_the_task(tokens_model):
    pipe = berta.pipeline(tokens_model, device="cpu")
    with pytest.raises(ValueError, match="classify needs a classification model, but this model's task is 'tokens'"):
        pipe.classify(["x"])
    assert pipe.embed(["x"]).shape == (1, 64)  # every torch model embeds, from the encoder under its head


class Exported:
    """A model that is not an `nn.Module` — the interface an exported model (`backend="onnx"`) offers: `.config`,
    `.task` and `__call__(input_ids, attention_mask, token_type_ids)` -> EncoderOutput with full logits."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.config, self.task = model, model.config, model.task

    def __call__(self, input_ids, attention_mask, token_type_ids=None):
        return self.model(input_ids, attention_mask, token_type_ids)


def test_a_model_that_is_not_a_module_drops_in(tokens_model, tmp_path):
    from berta.inference.pipeline import Pipeline

    reference = berta.pipeline(tokens_model, device="cpu")
    exported = Pipeline(Exported(reference.model), reference.tokenizer)
    assert exported.tag(TEXTS, aggregation="average") == reference.tag(TEXTS, aggregation="average")
    directory = save_model(tmp_path / "mlm", Tokenizer.from_pretrained("roberta"), "masked-lm", head_std=0.02)
    masked = berta.pipeline(directory, device="cpu")
    texts = ["<mask> and <mask> went up the hill.", "Zoë said <mask>"]
    ours = Pipeline(Exported(masked.model), masked.tokenizer).fill_mask(texts, top_k=3)
    for mine, theirs in zip(ours, masked.fill_mask(texts, top_k=3), strict=True):
        for a, b in zip(mine, theirs, strict=True):
            close(a, b)


class MultipleChoice(torch.nn.Module):
    """The multiple-choice interface — inputs (batch, choices, seq), logits (batch, choices) — built as
    transformers' *ForMultipleChoice is: one score per (context, candidate) row from a one-label classifier."""

    task = "multiple-choice"

    def __init__(self, classifier: torch.nn.Module):
        super().__init__()
        self.classifier, self.config = classifier, classifier.config

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        batch, choices, seq = input_ids.shape
        flat = [None if t is None else t.reshape(batch * choices, seq) for t in (input_ids, attention_mask,
                                                                                  token_type_ids)]
        output = self.classifier(*flat)
        output.logits = output.logits.view(batch, choices)
        return output


def test_choose_scores_every_candidate_with_its_context(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from berta.inference.pipeline import Pipeline

    tokenizer = Tokenizer.from_pretrained(minilm_directory())
    directory = save_model(tmp_path / "choice", tokenizer, "classification", {0: "score"}, head_std=1.0)
    pipe = Pipeline(MultipleChoice(berta.load(directory)), tokenizer, batch_size=4)
    contexts = ["She opened the door", "The bus was late", "", "Coffee"]
    candidates = [["and left.", "a cat.", "quietly, then ran."], ["again.", "by an hour."], ["x", "y", "z"],
                  ["was served.", "is a verb.", "ok", "spilled."]]
    reference = AutoModelForSequenceClassification.from_pretrained(directory).eval()
    for context, options, result in zip(contexts, candidates, pipe.choose(contexts, candidates), strict=True):
        with torch.no_grad():
            logits = torch.cat([reference(**tokenizer([context], [o], return_tensors="pt").model_inputs()).logits[0]
                                for o in options])
        expected = logits.softmax(-1)
        assert result["scores"] == pytest.approx(expected.tolist(), abs=1e-5)
        assert result["index"] == int(expected.argmax()) and result["choice"] == options[result["index"]]
