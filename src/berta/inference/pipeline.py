"""`berta.pipeline`: batched prediction for every task of a model directory.

    pipe = berta.pipeline("runs/sst2/model")
    pipe.classify(["a gem of a film", "two hours I will not get back"])   # [[{'label': 'pos', 'score': 0.97}], ...]

One object per checkpoint; its methods follow the task the checkpoint was trained for:

- `embed` (any model): sentence embeddings, as sentence-transformers computes them when the directory has its
  files (`modules.json`, `1_Pooling/config.json`, `2_Normalize`, `sentence_bert_config.json`), else mean pooling;
- `classify`, `tag`, `fill_mask`: the semantics of `transformers`' text-classification, token-classification
  (every aggregation strategy) and fill-mask pipelines;
- `answer`: extractive QA over long contexts (windows with `doc_stride`), SQuAD v2's null answer on request;
- `choose`: multiple choice.

Every method sorts its inputs by length into batches of `batch_size`, which the encoder runs padding-free, and
returns results in input order. An empty string is a valid input; an input longer than the model's window is
truncated (embed, classify, fill-mask: a warning counts them) or windowed (tag, answer), never an error.

The model is anything with `.config`, `.task` and `__call__(input_ids, attention_mask, token_type_ids)` returning
an `EncoderOutput` — a berta `nn.Module` or an exported model (`backend="onnx"`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from berta import tasks
from berta.device import resolve_device
from berta.io import read_json
from berta.tasks.base import collate_inputs, length_batches, softmax
from berta.tasks.tokens import token_windows
from berta.tokenizer import Tokenizer

log = logging.getLogger(__name__)

POOLING = ("cls", "mean", "max", "mean_sqrt_len")
AGGREGATIONS = ("none", "simple", "first", "average", "max")
FUNCTIONS = ("softmax", "sigmoid", "none")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class SentenceTransformerSettings:
    """What a sentence-transformers directory says about embedding: pooling, normalisation, truncation."""

    pooling: str = "mean"
    normalize: bool = False
    max_seq_length: int | None = None

    @staticmethod
    def read(directory: Path) -> SentenceTransformerSettings | None:
        """The settings of `directory`'s `modules.json` and its module folders, or None without one.

        Example:
            >>> SentenceTransformerSettings.read(Path("/no/such/model")) is None
            True
        """
        modules_file = directory / "modules.json"
        if not modules_file.is_file():
            return None
        pooling, normalize = "mean", False
        for module in read_json(modules_file):
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            if kind == "Transformer":
                continue
            if kind == "Normalize":
                normalize = True
            elif kind == "Pooling":
                config = read_json(directory / module.get("path", "") / "config.json")
                modes = [mode for mode in POOLING if config.get(f"pooling_mode_{mode}_tokens" if mode != "cls"
                                                                else "pooling_mode_cls_token")]
                others = [key for key, value in config.items() if key.startswith("pooling_mode_") and value
                          and key not in {f"pooling_mode_{m}_tokens" for m in POOLING} | {"pooling_mode_cls_token"}]
                if len(modes) != 1 or others:
                    raise ValueError(f"{directory / module.get('path', '')}/config.json: pooling modes "
                                     f"{modes + others}; berta supports exactly one of {POOLING}")
                pooling = modes[0]
            else:
                raise ValueError(f"{modules_file}: module {module.get('type')!r} is not supported "
                                 "(berta reads Transformer, Pooling and Normalize)")
        max_seq_length = None
        if (directory / "sentence_bert_config.json").is_file():
            max_seq_length = read_json(directory / "sentence_bert_config.json").get("max_seq_length")
        return SentenceTransformerSettings(pooling, normalize, max_seq_length)


def _texts(values: str | Sequence[str], name: str) -> list[str]:
    if isinstance(values, str):
        return [values]
    values = list(values)
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise TypeError(f"{name}[{index}] must be a str, got {type(value).__name__}")
    return values


def _finite(value: float) -> float:
    # JSON has no infinity: a question without any span scores -1e9 instead of -inf.
    return float(np.clip(value, -1e9, 1e9))


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """A dtype from its name ("bfloat16", "float16", "float32"). Example: `resolve_dtype("bfloat16")`."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


class Pipeline:
    """Prediction for one model and its tokenizer; build it with `berta.pipeline(path)`.

    Example:
        >>> directory = "runs/tiny/model"
        >>> pipe = Pipeline(berta.load(directory), Tokenizer.from_pretrained(directory))  # doctest: +SKIP
        >>> pipe.fill_mask(["Paris is the <mask> of France."])[0][0][0]["token_str"]  # doctest: +SKIP
        ' capital'
    """

    def __init__(self, model: Any, tokenizer: Tokenizer, batch_size: int = 32, directory: str | Path | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.config = model.config
        self.task = model.task
        self.directory = Path(directory) if directory is not None else None
        self.sentence_transformers = SentenceTransformerSettings.read(self.directory) if self.directory else None
        # The longest sequence the model takes: the position table's, and the tokenizer's published limit.
        self.max_length = min(self.config.max_length, tokenizer.model_max_length)
        self._token_types = tokenizer.has_token_types and self.config.type_vocab_size > 0
        if isinstance(model, nn.Module):
            model.eval()

    # ------------------------------------------------------------------ running the model

    @property
    def device(self) -> torch.device:
        """Where the inputs go: the model's parameters' device (CPU for exported models)."""
        if isinstance(self.model, nn.Module):
            return next(self.model.parameters()).device
        return torch.device("cpu")

    @property
    def dtype(self) -> str:
        """The model's floating-point type, e.g. "float32"."""
        if isinstance(self.model, nn.Module):
            return str(next(self.model.parameters()).dtype).removeprefix("torch.")
        return "float32"

    def methods(self) -> tuple[str, ...]:
        """The prediction methods this model serves. Example: `berta.pipeline(d).methods() == ("embed",)`."""
        methods = task_methods().get(self.task, ())
        return methods if isinstance(self.model, nn.Module) else tuple(m for m in methods if m != "embed" or
                                                                       self.task == "encoder")

    def _require(self, method: str) -> None:
        if method not in self.methods():
            serving = [name for name, methods in task_methods().items() if method in methods]
            architecture = (getattr(self.config, "extra", {}).get("architectures") or [self.task])[0]
            source = f"{self.directory} is" if self.directory else "it is"
            raise TaskMismatchError(
                f"{method} needs a {' or '.join(serving)} model, but this model's task is {self.task!r}: {source} "
                f"a {architecture} checkpoint, without a trained {' or '.join(serving)} head "
                f"(it serves: {', '.join(self.methods()) or 'nothing'})"
            )

    def _forward(self, features: Sequence[dict[str, Any]], model: Any = None, **extra: Any) -> Any:
        batch = collate_inputs(features, self.tokenizer.pad_id)
        device = self.device
        token_type_ids = batch["token_type_ids"].to(device) if self._token_types and "token_type_ids" in batch else None
        with torch.inference_mode():
            return (model or self.model)(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                                         token_type_ids, **extra)

    def _batched(self, features: Sequence[dict[str, Any]], run: Callable[[list[dict[str, Any]]], list[Any]]) -> list:
        """`run` on length-sorted batches of features; its per-feature results back in the features' order."""
        results: list[Any] = [None] * len(features)
        for indices in length_batches([len(f["input_ids"]) for f in features], self.batch_size):
            for index, result in zip(indices, run([features[i] for i in indices]), strict=True):
                results[index] = result
        return results

    def _features(self, texts: list[str], pairs: list[str] | None = None, max_length: int | None = None,
                  what: str = "inputs") -> list[dict[str, Any]]:
        max_length = max_length or self.max_length
        batch = self.tokenizer(texts, pairs, padding=False, truncation=True, max_length=max_length)
        truncated = sum(1 for encoding in batch.encodings if encoding.overflowing)
        if truncated:
            warnings.warn(f"{truncated} of {len(texts)} {what} are longer than {max_length} tokens and were "
                          "truncated", stacklevel=3)
        features = []
        for row in range(batch.num_rows):
            feature: dict[str, Any] = {"input_ids": batch["input_ids"][row], "truncated": bool(
                batch.encodings[row].overflowing)}
            if self._token_types:
                feature["token_type_ids"] = batch["token_type_ids"][row]
            features.append(feature)
        return features

    # ------------------------------------------------------------------ embed

    def embed(self, texts: str | Sequence[str], pooling: str | None = None, normalize: bool | None = None
              ) -> np.ndarray:
        """Sentence embeddings, (n, hidden) float32.

        Defaults follow the directory's sentence-transformers files (so all-MiniLM-L6-v2 gives what
        `SentenceTransformer(dir).encode(texts)` gives), else mean pooling without normalisation.

        Example:
            >>> berta.pipeline(minilm).embed(["a cat", "a dog"]).shape  # doctest: +SKIP
            (2, 384)
        """
        self._require("embed")
        texts = _texts(texts, "texts")
        settings = self.sentence_transformers or SentenceTransformerSettings()
        pooling = pooling or settings.pooling
        if pooling not in POOLING:
            raise ValueError(f"pooling {pooling!r} is not one of {POOLING}")
        normalize = settings.normalize if normalize is None else normalize
        max_length = min(settings.max_seq_length or self.max_length, self.max_length)
        encoder = self.model.encoder if isinstance(self.model, nn.Module) and self.task != "encoder" else self.model

        def run(features: list[dict[str, Any]]) -> list[np.ndarray]:
            output = self._forward(features, encoder)
            hidden = torch.as_tensor(output.last_hidden_state).float()  # (batch, seq, hidden)
            mask = collate_inputs(features, self.tokenizer.pad_id)["attention_mask"].to(hidden.device)
            pooled = pool(hidden, mask, pooling)
            if normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            return list(pooled.cpu().numpy())

        if not texts:
            return np.zeros((0, self.config.hidden_size), dtype=np.float32)
        rows = self._batched(self._features(texts, max_length=max_length, what="texts"), run)
        return np.stack(rows).astype(np.float32)

    # ------------------------------------------------------------------ classify

    def classify(
        self,
        texts: str | Sequence[str],
        text_pairs: str | Sequence[str] | None = None,
        top_k: int | None = 1,
        function_to_apply: str | None = None,
    ) -> list[list[dict[str, Any]]]:
        """Per input, the `top_k` labels (None: all) as `{label, score}`, best first.

        Scores as in `transformers`' text-classification pipeline: no function for regression, sigmoid for
        multi-label or a single label, softmax otherwise; `function_to_apply` ("softmax", "sigmoid", "none")
        overrides.

        Example:
            >>> berta.pipeline("runs/sst2/model").classify(["a gem"])  # doctest: +SKIP
            [[{'label': 'positive', 'score': 0.98}]]
        """
        self._require("classify")
        texts = _texts(texts, "texts")
        pairs = None if text_pairs is None else _texts(text_pairs, "text_pairs")
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(pairs)} text_pairs; they must match one to one")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
        function = function_to_apply or self._default_function()
        if function not in FUNCTIONS:
            raise ValueError(f"function_to_apply {function!r} is not one of {FUNCTIONS}")
        names = self.config.id2label

        def run(features: list[dict[str, Any]]) -> list[np.ndarray]:
            return list(torch.as_tensor(self._forward(features).logits).float().cpu().numpy())

        if not texts:
            return []
        results = []
        for logits in self._batched(self._features(texts, pairs), run):
            scores = softmax(logits) if function == "softmax" else (
                1.0 / (1.0 + np.exp(-logits)) if function == "sigmoid" else logits)
            ranked = sorted(({"label": names[i], "score": float(s)} for i, s in enumerate(scores)),
                            key=lambda item: -item["score"])
            results.append(ranked if top_k is None else ranked[:top_k])
        return results

    def _default_function(self) -> str:
        # transformers' TextClassificationPipeline.postprocess, in its order.
        problem = self.config.problem_type
        if problem == "regression":
            return "none"
        if problem == "multi_label_classification" or self.config.num_labels == 1:
            return "sigmoid"
        return "softmax"

    # ------------------------------------------------------------------ tag

    def tag(self, texts: str | Sequence[str], aggregation: str = "simple", stride: int | None = None
            ) -> list[list[dict[str, Any]]]:
        """Entities (or tokens) of each text with character offsets, as `transformers`' token-classification
        pipeline returns them for the same `aggregation` ("none", "simple", "first", "average", "max"); labels
        "O" are left out. Texts longer than the model's window are read in windows overlapping by `stride`
        tokens, each token in the window where it has most context (as `finetune --task tokens` does).

        Example:
            >>> berta.pipeline("runs/ner/model").tag(["Ada Lovelace lived in London"])  # doctest: +SKIP
            [[{'entity_group': 'PER', 'score': 0.99, 'word': 'Ada Lovelace', 'start': 0, 'end': 12}, ...]]
        """
        self._require("tag")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation {aggregation!r} is not one of {AGGREGATIONS}")
        texts = _texts(texts, "texts")
        if not texts:
            return []
        batch = self.tokenizer(texts, padding=False)
        features, owners = [], []  # owners[i]: (text, window start, owned start, owned end)
        for index in range(len(texts)):
            ids = batch["input_ids"][index]
            for start, end, own_start, own_end in token_windows(len(ids) - 2, self.max_length - 2, stride):
                features.append({"input_ids": [ids[0], *ids[1 + start : 1 + end], ids[-1]]})
                owners.append((index, start, own_start, own_end))

        def run(features: list[dict[str, Any]]) -> list[np.ndarray]:
            logits = torch.as_tensor(self._forward(features).logits).float().cpu().numpy()  # (batch, seq, labels)
            return [logits[row, : len(f["input_ids"])] for row, f in enumerate(features)]

        rows = self._batched(features, run)
        scores: list[np.ndarray] = [np.zeros((len(batch["input_ids"][i]) - 2, self.config.num_labels), np.float32)
                                    for i in range(len(texts))]
        for (index, start, own_start, own_end), logits in zip(owners, rows, strict=True):
            content = logits[1:-1]  # without the window's special tokens
            scores[index][own_start:own_end] = softmax(content[own_start - start : own_end - start])
        return [self._entities(text, batch.encodings[i], scores[i], aggregation) for i, text in enumerate(texts)]

    def _entities(self, text: str, encoding: Any, scores: np.ndarray, aggregation: str) -> list[dict[str, Any]]:
        # transformers' TokenClassificationPipeline.gather_pre_entities / aggregate, on the content tokens.
        names = self.config.id2label
        word_aware = bool(getattr(self.tokenizer.backend.model, "continuing_subword_prefix", None))
        tokens = []
        for position, (token_id, (start, end)) in enumerate(zip(encoding.ids[1:-1], encoding.offsets[1:-1],
                                                               strict=True)):
            word = self.tokenizer.id_to_token(token_id)
            reference = text[start:end]
            if word_aware:
                is_subword = len(word) != len(reference)
            else:
                is_subword = start > 0 and " " not in text[start - 1 : start + 1]
            if token_id == self.tokenizer.unk_id:
                word, is_subword = reference, False
            tokens.append({"word": word, "scores": scores[position], "start": start, "end": end,
                           "index": position + 1, "is_subword": is_subword})
        if aggregation in ("none", "simple"):
            entities = [{"entity": names[int(t["scores"].argmax())], "score": float(t["scores"].max()),
                         "index": t["index"], "word": t["word"], "start": t["start"], "end": t["end"]}
                        for t in tokens]
        else:
            entities, group = [], []
            for token in tokens:
                if group and not token["is_subword"]:
                    entities.append(self._word(group, aggregation))
                    group = []
                group.append(token)
            if group:
                entities.append(self._word(group, aggregation))
        if aggregation != "none":
            entities = self._group(entities)
        return [e for e in entities if e.get("entity", e.get("entity_group")) != "O"]

    def _decode_tokens(self, tokens: list[str]) -> str:
        decoder = self.tokenizer.backend.decoder
        return decoder.decode(tokens) if decoder is not None else " ".join(tokens)

    def _word(self, tokens: list[dict[str, Any]], aggregation: str) -> dict[str, Any]:
        names = self.config.id2label
        if aggregation == "first":
            scores = tokens[0]["scores"]
        elif aggregation == "max":
            scores = max(tokens, key=lambda t: t["scores"].max())["scores"]
        else:
            scores = np.nanmean(np.stack([t["scores"] for t in tokens]), axis=0)
        best = int(scores.argmax())
        return {"entity": names[best], "score": float(scores[best]),
                "word": self._decode_tokens([t["word"] for t in tokens]),
                "start": tokens[0]["start"], "end": tokens[-1]["end"]}

    def _group(self, entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
        def split(name: str) -> tuple[str, str]:
            return (name[0], name[2:]) if name.startswith(("B-", "I-")) else ("I", name)

        groups: list[list[dict[str, Any]]] = []
        for entity in entities:
            prefix, kind = split(entity["entity"])
            if groups and kind == split(groups[-1][-1]["entity"])[1] and prefix != "B":
                groups[-1].append(entity)
            else:
                groups.append([entity])
        return [{"entity_group": group[0]["entity"].split("-", 1)[-1],
                 "score": float(np.nanmean([e["score"] for e in group])),
                 "word": self._decode_tokens([e["word"] for e in group]),
                 "start": group[0]["start"], "end": group[-1]["end"]} for group in groups]

    # ------------------------------------------------------------------ answer

    def answer(
        self,
        questions: str | Sequence[str],
        contexts: str | Sequence[str],
        top_k: int = 1,
        max_answer_length: int = 30,
        doc_stride: int = 128,
        handle_impossible: bool = False,
    ) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        """Per question the best answer span `{answer, score, start, end}` in its context (a list of `top_k`
        when top_k > 1); `start`/`end` are character offsets, `score` the start + end logits. Long contexts are
        read in windows overlapping by `doc_stride` tokens. With `handle_impossible` (SQuAD v2 models) the
        answer is "" (start = end = -1) when the null score beats every span.

        Example:
            >>> berta.pipeline("runs/squad/model").answer(["Where?"], ["She lives in Paris."])  # doctest: +SKIP
            [{'answer': 'Paris', 'score': 11.2, 'start': 13, 'end': 18}]
        """
        from berta.data.readers import QAExample
        from berta.tasks.qa import QATask

        self._require("answer")
        questions, contexts = _texts(questions, "questions"), _texts(contexts, "contexts")
        if len(questions) != len(contexts):
            raise ValueError(f"got {len(questions)} questions but {len(contexts)} contexts; they must match")
        if top_k < 1 or max_answer_length < 1:
            raise ValueError(f"top_k and max_answer_length must be >= 1, got {top_k} and {max_answer_length}")
        max_query = min(64, self.max_length // 4)
        room = self.max_length - max_query - 4
        stride = doc_stride
        if stride >= room:
            stride = room // 2
            warnings.warn(f"doc_stride {doc_stride} does not fit this model's {self.max_length}-token window "
                          f"({room} context tokens); using {stride}", stacklevel=2)
        task = QATask(self.tokenizer, max_length=self.max_length, stride=stride, max_query_length=max_query,
                      n_best=max(20, top_k), max_answer_length=max_answer_length, with_null_answer=handle_impossible)
        examples = [QAExample(str(i), q, c, [], False) for i, (q, c) in enumerate(zip(questions, contexts,
                                                                                       strict=True))]
        if not examples:
            return []
        features = task.featurize(examples, labelled=False)

        def run(batch: list[dict[str, Any]]) -> list[dict[str, np.ndarray]]:
            output = self._forward(batch)
            start = torch.as_tensor(output.start_logits).float().cpu().numpy()
            end = torch.as_tensor(output.end_logits).float().cpu().numpy()
            return [{"start_logits": start[r, : len(f["input_ids"])], "end_logits": end[r, : len(f["input_ids"])]}
                    for r, f in enumerate(batch)]

        predictions = task.decode(examples, features, self._batched(features, run))
        results: list[Any] = []
        for prediction in predictions:
            spans = [{"answer": c["text"], "score": _finite(c["score"]), "start": c["start"], "end": c["end"]}
                     for c in prediction["n_best"]]
            if handle_impossible and prediction["answer"] == "":
                null = {"answer": "", "score": _finite(prediction["no_answer_score"]), "start": -1, "end": -1}
                spans = [null, *spans]
            if not spans:  # an empty context: nothing to answer from
                spans = [{"answer": "", "score": -1e9, "start": -1, "end": -1}]
            results.append(spans[0] if top_k == 1 else spans[:top_k])
        return results

    # ------------------------------------------------------------------ fill_mask

    def fill_mask(self, texts: str | Sequence[str], top_k: int = 5, targets: str | Sequence[str] | None = None
                  ) -> list[list[list[dict[str, Any]]]]:
        """Per text, per mask token (left to right), the `top_k` fillers `{token, token_str, score, sequence}`,
        as `transformers`' fill-mask pipeline gives them; `targets` restricts the candidates.

        Example:
            >>> berta.pipeline("runs/tiny/model").fill_mask(["Paris is the <mask> of France."])  # doctest: +SKIP
            [[[{'token': 3139, 'token_str': ' capital', 'score': 0.41, 'sequence': 'Paris is the capital ...'}]]]
        """
        self._require("fill_mask")
        texts = _texts(texts, "texts")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        target_ids = None if targets is None else self._target_ids(_texts(targets, "targets"))
        features = self._features(texts, what="texts")
        mask_id = self.tokenizer.mask_id
        for row, (text, feature) in enumerate(zip(texts, features, strict=True)):
            if mask_id not in feature["input_ids"]:
                cut = f" within the first {self.max_length} tokens" if feature["truncated"] else ""
                raise ValueError(f"text {row + 1} ({text[:80]!r}) holds no mask token{cut}; write "
                                 f"{self.tokenizer.mask_token} where a word should be predicted")

        def run(batch: list[dict[str, Any]]) -> list[list[list[dict[str, Any]]]]:
            input_ids = collate_inputs(batch, self.tokenizer.pad_id)["input_ids"]
            masked = input_ids.eq(mask_id)  # (batch, seq)
            if isinstance(self.model, nn.Module):  # the LM head only at the masks
                logits = self._forward(batch, masked_positions=masked.to(self.device)).logits  # (masks, vocab)
            else:
                logits = torch.as_tensor(self._forward(batch).logits)[masked]
            probabilities = logits.float().softmax(dim=-1).cpu()
            if target_ids is not None:
                probabilities = probabilities[:, target_ids]
            values, ids = probabilities.topk(min(top_k, probabilities.shape[-1]), dim=-1)
            if target_ids is not None:
                ids = torch.tensor(target_ids)[ids]
            out: list[list[list[dict[str, Any]]]] = [[] for _ in batch]
            rows, columns = masked.nonzero(as_tuple=True)
            for mask, (row, column) in enumerate(zip(rows.tolist(), columns.tolist(), strict=True)):
                own = batch[row]["input_ids"]
                single = own.count(mask_id) == 1
                candidates = []
                for score, token_id in zip(values[mask].tolist(), ids[mask].tolist(), strict=True):
                    filled = [token_id if i == column else t for i, t in enumerate(own)]
                    candidates.append({"score": score, "token": token_id,
                                       "token_str": self.tokenizer.decode([token_id]),
                                       "sequence": self.tokenizer.decode(filled, skip_special_tokens=single)})
                out[row].append(candidates)
            return out

        return self._batched(features, run) if texts else []

    def _target_ids(self, targets: list[str]) -> list[int]:
        # transformers' FillMaskPipeline.get_target_ids: a vocabulary entry, else the target's first token.
        vocabulary = self.tokenizer.get_vocab()
        ids = []
        for target in targets:
            token_id = vocabulary.get(target)
            if token_id is None:
                pieces = self.tokenizer.encode(target, add_special_tokens=False).ids
                if not pieces:
                    log.warning("target %r has no tokens in this vocabulary; ignored", target)
                    continue
                token_id = pieces[0]
                log.warning("target %r is not in the vocabulary; using its first token %r", target,
                            self.tokenizer.id_to_token(token_id))
            ids.append(token_id)
        if not ids:
            raise ValueError(f"none of the targets {targets} is in the vocabulary")
        return sorted(set(ids))

    # ------------------------------------------------------------------ choose

    def choose(self, contexts: str | Sequence[str], candidates: Sequence[Sequence[str]]) -> list[dict[str, Any]]:
        """Per context, the best of its candidate continuations: `{choice, index, scores}` with `scores` the
        softmax over the candidates (a multiple-choice model: inputs (batch, choices, seq), logits (batch,
        choices)). Contexts with different numbers of candidates are run apart.

        Example:
            >>> pipe = berta.pipeline("runs/swag/model")  # doctest: +SKIP
            >>> pipe.choose(["She opened the door"], [["and left.", "a cat."]])  # doctest: +SKIP
            [{'choice': 'and left.', 'index': 0, 'scores': [0.93, 0.07]}]
        """
        self._require("choose")
        contexts = _texts(contexts, "contexts")
        candidates = [_texts(c, f"candidates[{i}]") for i, c in enumerate(candidates)]
        if len(candidates) != len(contexts):
            raise ValueError(f"got {len(contexts)} contexts but {len(candidates)} candidate lists")
        results: list[Any] = [None] * len(contexts)
        by_count: dict[int, list[int]] = {}
        for index, options in enumerate(candidates):
            if not options:
                raise ValueError(f"candidates[{index}] is empty; a context needs at least one candidate")
            by_count.setdefault(len(options), []).append(index)
        for count, indices in by_count.items():
            flat = self._features([contexts[i] for i in indices for _ in range(count)],
                                  [option for i in indices for option in candidates[i]], what="choices")
            order = length_batches([max(len(flat[j * count + k]["input_ids"]) for k in range(count))
                                    for j in range(len(indices))], max(1, self.batch_size // count))
            for group in order:
                rows = [flat[j * count + k] for j in group for k in range(count)]
                batch = collate_inputs(rows, self.tokenizer.pad_id)
                shaped = {name: value.view(len(group), count, -1).to(self.device) for name, value in batch.items()}
                with torch.inference_mode():
                    logits = self.model(shaped["input_ids"], shaped["attention_mask"],
                                        shaped.get("token_type_ids") if self._token_types else None).logits
                probabilities = torch.as_tensor(logits).float().softmax(dim=-1).cpu().numpy()  # (batch, choices)
                for j, scores in zip(group, probabilities, strict=True):
                    best = int(scores.argmax())
                    results[indices[j]] = {"choice": candidates[indices[j]][best], "index": best,
                                           "scores": [float(s) for s in scores]}
        return results


@dataclass(kw_only=True)
class RuntimeOptions:
    """Where and how a model runs: the options `berta predict` and `berta serve` share."""

    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1, ..."})
    dtype: str | None = field(default=None, metadata={"help": "bfloat16 or float16 weights (default: as saved)"})
    quantize: Literal["int8"] | None = field(
        default=None, metadata={"help": "int8: the encoder layers in int8 (per-channel weights, per-token activations)"}
    )
    backend: Literal["auto", "torch", "onnx"] = field(
        default="auto", metadata={"help": "onnx runs an exported graph (berta export onnx); auto: onnx for such a "
                                          "directory"}
    )
    threads: int | None = field(
        default=None, metadata={"min": 1, "help": "CPU threads for the model in each process (default: one per "
                                                  "core, shared out among serve's --workers)"}
    )

    def apply_threads(self) -> None:
        """Set this process's model threads (torch's intra-op pool, which the ONNX backend follows too)."""
        if self.threads is not None:
            torch.set_num_threads(self.threads)


def task_methods() -> dict[str, tuple[str, ...]]:
    """Task name -> the pipeline methods it serves (each task's `methods`); `embed` works on every torch model,
    reading the encoder under the head.

    Example:
        >>> task_methods()["qa"]
        ('answer', 'embed')
    """
    return {name: (*task.methods, "embed") if "embed" not in task.methods else task.methods
            for name, task in tasks.TASKS.items()}


class TaskMismatchError(ValueError):
    """A method the loaded model's task does not serve (the server answers it with 4xx)."""


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(batch, seq, hidden) -> (batch, hidden) by sentence-transformers' pooling modes.

    Example:
        >>> pool(torch.ones(1, 2, 3), torch.tensor([[1, 0]]), "mean").tolist()
        [[1.0, 1.0, 1.0]]
    """
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (batch, seq, 1)
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "max":
        return hidden.masked_fill(mask == 0, -1e9).max(dim=1).values
    summed, counts = (hidden * mask).sum(dim=1), mask.sum(dim=1).clamp(min=1e-9)
    if pooling == "mean":
        return summed / counts
    if pooling == "mean_sqrt_len":
        return summed / counts.sqrt()
    raise ValueError(f"pooling {pooling!r} is not one of {POOLING}")


def pipeline(
    path: str | Path,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = None,
    batch_size: int = 32,
    backend: str = "auto",
    quantize: str | None = None,
) -> Pipeline:
    """The prediction pipeline of a model directory (its task from `config.json`, its tokenizer beside it).

    `device="auto"` takes the GPU when there is one; `dtype` ("bfloat16", "float16") casts the weights;
    `quantize="int8"` runs the encoder layers in int8 (`berta.inference.quantize`); `backend="onnx"` runs an
    exported model (`berta export onnx`) in onnxruntime instead, and "auto" does so for a directory that holds
    `model.onnx` and no PyTorch weights.

    Example:
        >>> pipe = berta.pipeline("runs/sst2/model")  # doctest: +SKIP
        >>> pipe.classify(["a gem"], top_k=None)  # doctest: +SKIP
    """
    if backend not in ("auto", "torch", "onnx"):
        raise ValueError(f"backend {backend!r} is not one of ('auto', 'torch', 'onnx')")
    from berta.checkpoints.hf import PICKLE_WEIGHTS_NAME, WEIGHTS_NAME, load, model_directory
    from berta.inference.export import GRAPH_NAME

    directory = model_directory(path)  # a hub id becomes its downloaded directory, for weights and tokenizer
    if backend == "auto":
        torch_weights = any((directory / name).is_file() for name in (WEIGHTS_NAME, PICKLE_WEIGHTS_NAME))
        backend = "onnx" if (directory / GRAPH_NAME).is_file() and not torch_weights else "torch"
    if backend == "torch":
        model = load(directory, device=resolve_device(device), dtype=resolve_dtype(dtype), quantize=quantize)
    else:
        if dtype is not None or quantize is not None:
            raise ValueError(f"{directory}: an ONNX graph keeps the precision it was exported with; export it "
                             "with `berta export onnx --quantize int8` instead of passing dtype/quantize")
        from berta.inference.onnx_backend import OnnxModel

        model = OnnxModel(directory)
    return Pipeline(model, Tokenizer.from_pretrained(directory), batch_size=batch_size, directory=directory)

