"""Masked-language-model batches: dynamic, static and whole-word masking, TLM pairs, language sampling.

The recipe is fairseq's `MaskTokensDataset` (RoBERTa): of the non-special tokens of a sample, `mask_prob` are
selected (`int(mask_prob * n + u)`, u uniform in [0, 1), so the expected count is exact); of those, 80% become
`<mask>`, 10% a random non-special token and 10% stay as they are — and all of them are predicted. The random
state of a sample is a pure function of (seed, epoch, sample index), so a sample's mask is the same in any batch,
on any rank, after any resume.

    vocabulary = MaskingVocabulary.from_tokenizer(tok)
    collator = MaskingCollator(vocabulary, mask_prob=0.15, whole_word=True, seed=0)
    batch = collator([dataset[i] for i in indices], indices, epoch)   # input_ids, labels, masked_positions, ...
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from berta.config import IGNORE_INDEX
from berta.seeding import seeded_generator

if TYPE_CHECKING:
    from berta.tokenizer import Tokenizer


# The mark each tokenizer type puts on a word's first piece (byte-level BPE, SentencePiece) or on the
# continuation pieces (WordPiece).
_BYTE_LEVEL_SPACE = "\u0120"  # "Ġ"
_SENTENCEPIECE_SPACE = "\u2581"  # "▁"
_WORDPIECE_CONTINUATION = "##"


@dataclass(frozen=True)
class MaskingVocabulary:
    """What masking needs to know about a vocabulary: special ids, the mask id and which tokens start a word.

    `word_start[id]` is True for tokens that begin a word (and for special tokens); whole-word masking groups a
    word start with the continuation pieces after it. `position_offset` is the first position id of the family
    (2 for RoBERTa / XLM-R, fairseq's padding offset; 0 for BERT), used for TLM's restarting positions.

    Example: `MaskingVocabulary.from_tokenizer(Tokenizer.from_pretrained("roberta")).mask_id == 50261`.
    """

    vocab_size: int
    pad_id: int
    mask_id: int
    special_ids: frozenset[int]
    word_start: np.ndarray  # (vocab_size,) bool
    position_offset: int = 2

    def __post_init__(self) -> None:
        if self.word_start.shape != (self.vocab_size,):
            raise ValueError(f"word_start has shape {self.word_start.shape}; expected ({self.vocab_size},)")
        outside = sorted(i for i in {self.pad_id, self.mask_id, *self.special_ids} if not 0 <= i < self.vocab_size)
        if outside:
            raise ValueError(f"special ids {outside} are outside the vocabulary of {self.vocab_size} tokens")

    @staticmethod
    def from_tokenizer(tokenizer: Tokenizer, position_offset: int | None = None) -> MaskingVocabulary:
        """Build the vocabulary facts from a berta `Tokenizer`, computing the word-start table once.

        `position_offset` should be the model's `EncoderConfig.position_offset`; by default the family's (0 for
        BERT, 2 for RoBERTa / XLM-R).

        Example: `MaskingVocabulary.from_tokenizer(tok).word_start[tok.token_to_id("Ġworld")]` is True.
        """
        special_ids = frozenset(tokenizer.special_ids)
        return MaskingVocabulary(
            vocab_size=len(tokenizer),
            pad_id=tokenizer.pad_id,
            mask_id=tokenizer.mask_id,
            special_ids=special_ids,
            word_start=word_start_table(tokenizer.get_vocab(), tokenizer.family, special_ids, len(tokenizer)),
            position_offset=(0 if tokenizer.family == "bert" else 2) if position_offset is None else position_offset,
        )


def word_start_table(vocab: Mapping[str, int], family: str, special_ids: frozenset[int] | set[int],
                     vocab_size: int) -> np.ndarray:
    """A (vocab_size,) bool table: True where a token begins a word, for the three tokenizer types.

    Byte-level BPE (RoBERTa) and SentencePiece (XLM-R) mark a word's first piece with a leading `Ġ` / `▁`;
    WordPiece (BERT) marks the other pieces with `##`. Special tokens count as word starts. (A sequence's first
    token is also a word start whatever its piece: `MaskingCollator` handles that, since byte-level BPE encodes a
    line's first word without its space.)

    Example: `word_start_table({"Ġthe": 0, "re": 1}, "roberta", set(), 2).tolist() == [True, False]`.
    """
    table = np.zeros(vocab_size, dtype=bool)
    for token, index in vocab.items():
        if not 0 <= index < vocab_size:
            raise ValueError(f"token {token!r} has id {index}, outside the vocabulary of {vocab_size} tokens")
        if family == "bert":
            table[index] = not token.startswith(_WORDPIECE_CONTINUATION)
        elif family == "roberta":
            table[index] = token.startswith(_BYTE_LEVEL_SPACE)
        elif family == "xlm-roberta":
            table[index] = token.startswith(_SENTENCEPIECE_SPACE)
        else:
            raise ValueError(f"unknown tokenizer family {family!r}; expected bert, roberta or xlm-roberta")
    table[list(special_ids)] = True
    return table


def sample_generator(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random generator of one sample: a pure function of (seed, epoch, sample index).

    Example: `sample_generator(0, 1, 42).random()` is the same number in every process, every run.
    """
    return seeded_generator(seed, epoch, index)


class MaskingCollator:
    """Turns samples into a masked-LM batch of torch tensors; masks are drawn per (seed, epoch, sample index).

    Called as `collator(samples, indices, epoch)`. A sample is a 1-D int array of token ids with its special
    tokens, or a dict with `input_ids` and optionally `position_ids` / `language_ids` (TLM pairs from
    `BlockDataset`). The batch holds `input_ids` (batch, seq), `attention_mask` (batch, seq), `labels` (batch,
    seq; -100 where not predicted), `masked_positions` (batch, seq) bool, and `position_ids` / `language_ids`
    when the samples carry them. Sample position ids count from 0; the batch's are shifted by the vocabulary's
    `position_offset` (the model's), and padding gets `position_offset - 1` (clamped at 0), as the model's own
    positions do; padded languages are 0.

    - `mask_prob` of the non-special, non-padding tokens (or words, with `whole_word`) are selected; of those
      `random_token_prob` get a random non-special token, `leave_unmasked_prob` stay, the rest become the mask.
    - `static_masks=N` (N > 0) fixes N masks per sample, used in turn by epoch (epoch % N), which is the original
      BERT's static masking (the data duplicated N times, each copy masked once); 0 is RoBERTa's dynamic masking.

    Example:
        >>> from berta.tokenizer import Tokenizer
        >>> collator = MaskingCollator(MaskingVocabulary.from_tokenizer(Tokenizer.from_pretrained("roberta")))
        >>> batch = collator([np.array([0, 31414, 232, 2])], indices=[7], epoch=0)
        >>> sorted(batch), tuple(batch["labels"].shape)
        (['attention_mask', 'input_ids', 'labels', 'masked_positions'], (1, 4))
    """

    def __init__(
        self,
        vocabulary: MaskingVocabulary | Tokenizer,
        mask_prob: float = 0.15,
        random_token_prob: float = 0.1,
        leave_unmasked_prob: float = 0.1,
        whole_word: bool = False,
        seed: int = 0,
        static_masks: int = 0,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        if not isinstance(vocabulary, MaskingVocabulary):
            vocabulary = MaskingVocabulary.from_tokenizer(vocabulary)
        if not 0.0 < mask_prob < 1.0:
            raise ValueError(f"mask_prob is {mask_prob}; expected a probability in (0, 1)")
        if random_token_prob < 0 or leave_unmasked_prob < 0 or random_token_prob + leave_unmasked_prob > 1.0:
            raise ValueError(f"random_token_prob ({random_token_prob}) and leave_unmasked_prob "
                             f"({leave_unmasked_prob}) must be non-negative and sum to at most 1")
        if static_masks < 0:
            raise ValueError(f"static_masks is {static_masks}; expected 0 (dynamic masking) or a positive count")
        if seed < 0:
            raise ValueError(f"seed is {seed}; expected a non-negative integer")
        self.vocabulary = vocabulary
        self.mask_prob = mask_prob
        self.random_token_prob = random_token_prob
        self.leave_unmasked_prob = leave_unmasked_prob
        self.whole_word = whole_word
        self.seed = seed
        self.static_masks = static_masks
        self.pad_to_multiple_of = pad_to_multiple_of
        special = np.zeros(vocabulary.vocab_size, dtype=bool)
        special[list({vocabulary.pad_id, vocabulary.mask_id, *vocabulary.special_ids})] = True
        self._special = special  # (vocab,) bool: never selected, never drawn as a random token
        self._random_ids = np.flatnonzero(~special)  # the ids a random replacement is drawn from

    def mask(self, input_ids: np.ndarray, index: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Mask one sample: returns (masked input ids, selected positions as bool), both of the sample's length.

        Example: `ids, selected = collator.mask(np.array([0, 31414, 232, 2]), index=7, epoch=0)`.
        """
        ids = np.asarray(input_ids, dtype=np.int64)
        if ids.ndim != 1:
            raise ValueError(f"sample {index} has shape {ids.shape}; expected a 1-D array of token ids")
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocabulary.vocab_size):
            raise ValueError(f"sample {index} has token ids outside [0, {self.vocabulary.vocab_size})")
        mask_epoch = epoch % self.static_masks if self.static_masks else epoch
        rng = sample_generator(self.seed, mask_epoch, index)
        candidate = ~self._special[ids]  # (seq,)
        if self.whole_word:
            # A unit is a word: a word-start token, or any token right after a special token or at the start
            # (byte-level BPE encodes a line's first word without its leading space).
            after_special = np.concatenate([[True], ~candidate[:-1]])
            starts = candidate & (self.vocabulary.word_start[ids] | after_special)
            unit_of_token = np.cumsum(starts) - 1  # (seq,) the word each token belongs to
            num_units = int(starts.sum())
        else:
            unit_of_token = np.cumsum(candidate) - 1
            num_units = int(candidate.sum())
        num_selected = min(num_units, int(self.mask_prob * num_units + rng.random()))
        unit_selected = np.zeros(num_units, dtype=bool)
        unit_selected[rng.choice(num_units, num_selected, replace=False)] = True
        # The 80/10/10 split is decided per unit (fairseq decides per word too, then expands to its tokens).
        decision = rng.random(num_units)
        unit_unchanged = unit_selected & (decision < self.leave_unmasked_prob)
        unit_random = unit_selected & ~unit_unchanged & (decision < self.leave_unmasked_prob + self.random_token_prob)
        selected = candidate & unit_selected[unit_of_token]
        random_token = candidate & unit_random[unit_of_token]
        masked = selected & ~random_token & ~(candidate & unit_unchanged[unit_of_token])
        out = ids.copy()
        out[masked] = self.vocabulary.mask_id
        out[random_token] = self._random_ids[rng.integers(0, len(self._random_ids), int(random_token.sum()))]
        return out, selected

    def __call__(self, samples: Sequence[Any], indices: Sequence[int], epoch: int) -> dict[str, torch.Tensor]:
        if len(samples) != len(indices):
            raise ValueError(f"{len(samples)} samples but {len(indices)} indices; expected one index per sample")
        if not samples:
            raise ValueError("cannot collate an empty batch")
        fields = [s if isinstance(s, Mapping) else {"input_ids": s} for s in samples]
        lengths = [len(f["input_ids"]) for f in fields]
        seq = max(lengths)
        if self.pad_to_multiple_of:
            seq = -(-seq // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = len(fields)
        input_ids = np.full((batch, seq), self.vocabulary.pad_id, dtype=np.int64)  # (batch, seq)
        labels = np.full((batch, seq), IGNORE_INDEX, dtype=np.int64)  # (batch, seq)
        masked_positions = np.zeros((batch, seq), dtype=bool)  # (batch, seq)
        attention_mask = np.zeros((batch, seq), dtype=np.int64)  # (batch, seq)
        for row, (sample, index) in enumerate(zip(fields, indices, strict=True)):
            ids = np.asarray(sample["input_ids"], dtype=np.int64)
            masked, selected = self.mask(ids, int(index), epoch)
            n = len(ids)
            input_ids[row, :n] = masked
            labels[row, :n][selected] = ids[selected]
            masked_positions[row, :n] = selected
            attention_mask[row, :n] = 1
        result = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention_mask),
            "labels": torch.from_numpy(labels),
            "masked_positions": torch.from_numpy(masked_positions),
        }
        offset = self.vocabulary.position_offset
        for name, shift, padding in (("position_ids", offset, max(offset - 1, 0)), ("language_ids", 0, 0)):
            present = [name in f for f in fields]
            if any(present) and not all(present):
                raise ValueError(f"some samples carry {name} and some do not; a batch must be uniform")
            if all(present):
                values = np.full((batch, seq), padding, dtype=np.int64)  # (batch, seq)
                for row, sample in enumerate(fields):
                    values[row, : lengths[row]] = np.asarray(sample[name], dtype=np.int64) + shift
                result[name] = torch.from_numpy(values)
        return result


def pair_sample(source: np.ndarray, target: np.ndarray, cls_id: int, sep_id: int, family: str,
                max_length: int, languages: tuple[int, int] = (0, 0)) -> dict[str, np.ndarray]:
    """A TLM sample: a translation pair joined with the family's pair template, positions restarting at the target.

    RoBERTa / XLM-R: `<s> source </s></s> target </s>` (fairseq's pair template); BERT: `[CLS] source [SEP]
    target [SEP]`. The longer side is cut first until the pair fits `max_length`. `position_ids` count from 0
    and start again at the target's first template token, as in XLM's translation language modelling (the
    collator adds the model's position offset); `language_ids` are `languages[0]` then `languages[1]`.

    Example: `pair_sample(np.array([10, 11]), np.array([12]), 0, 2, "roberta", 512)["position_ids"]`
    -> `[0, 1, 2, 3, 0, 1, 2]`.
    """
    specials = 3 if family == "bert" else 4
    budget = max_length - specials
    if budget < 2:
        raise ValueError(f"max_length {max_length} leaves no room for a pair ({specials} special tokens)")
    source_length, target_length = len(source), len(target)
    while source_length + target_length > budget:  # longest first, as transformers' "longest_first"
        if source_length >= target_length:
            source_length -= 1
        else:
            target_length -= 1
    first = np.concatenate([[cls_id], source[:source_length], [sep_id]]).astype(np.int64)
    second_head = [sep_id] if family != "bert" else []
    second = np.concatenate([second_head, target[:target_length], [sep_id]]).astype(np.int64)
    return {
        "input_ids": np.concatenate([first, second]),
        "position_ids": np.concatenate([np.arange(len(first)), np.arange(len(second))]),
        "language_ids": np.repeat(np.array(languages, dtype=np.int64), [len(first), len(second)]),
    }


def language_sampling_probabilities(counts: Mapping[str, float], alpha: float = 0.3) -> dict[str, float]:
    """XLM-R's language sampling: q_i = p_i^alpha / sum_j p_j^alpha, with p_i the share of language i's data.

    alpha = 1 samples in proportion to the data; alpha -> 0 samples uniformly; XLM-R uses 0.3 (XLM: 0.5 for
    MLM), which raises low-resource languages.

    Example: `language_sampling_probabilities({"en": 900, "sw": 100}, alpha=0.3)` -> `{"en": 0.66, "sw": 0.34}`
    (rounded).
    """
    if not counts:
        raise ValueError("no languages to sample from")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha is {alpha}; expected a value in [0, 1]")
    negative = {k: v for k, v in counts.items() if v < 0}
    total = float(sum(counts.values()))
    if negative or total <= 0:
        raise ValueError(f"language counts must be non-negative with a positive total; got {dict(counts)}")
    weights = {k: (v / total) ** alpha if v > 0 else 0.0 for k, v in counts.items()}
    norm = sum(weights.values())
    return {k: w / norm for k, w in weights.items()}


class LanguageSampler:
    """Draws sample indices so that languages appear with XLM-R's smoothed probabilities.

    `sample_languages[i]` is the language (any hashable code) of sample i. Each epoch draws `num_samples`
    indices (default: all samples): a language by `language_sampling_probabilities(samples per language,
    alpha)`, then the next sample of that language from a shuffled order (so a language's samples are all used
    before any repeats). Indices depend on (seed, epoch) only.

    Example:
        >>> sampler = LanguageSampler(["en"] * 9 + ["sw"], alpha=0.3, seed=0)  # 10% Swahili samples...
        >>> {language: round(p, 3) for language, p in sampler.probabilities.items()}  # ...drawn 34% of the time
        {'en': 0.659, 'sw': 0.341}
    """

    def __init__(self, sample_languages: Sequence[Any] | np.ndarray, alpha: float = 0.3, seed: int = 0,
                 num_samples: int | None = None) -> None:
        languages = np.asarray(sample_languages)
        if languages.ndim != 1 or languages.size == 0:
            raise ValueError(f"sample_languages has shape {languages.shape}; expected a non-empty 1-D sequence")
        codes, inverse, counts = np.unique(languages, return_inverse=True, return_counts=True)
        self.languages = [c.item() if hasattr(c, "item") else c for c in codes]
        self.probabilities = language_sampling_probabilities(dict(zip(self.languages, counts.tolist(), strict=True)),
                                                             alpha)
        self._members = [np.flatnonzero(inverse == k) for k in range(len(codes))]
        self.seed = seed
        self.num_samples = int(languages.size if num_samples is None else num_samples)
        self.epoch = 0

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch `__iter__` draws for. Example: `sampler.set_epoch(3)`."""
        self.epoch = epoch

    def indices(self, epoch: int) -> np.ndarray:
        """The epoch's sample indices, (num_samples,) int64. Example: `sampler.indices(0)`."""
        rng = seeded_generator(self.seed, epoch)
        p = np.array([self.probabilities[c] for c in self.languages])
        drawn = rng.choice(len(self.languages), size=self.num_samples, p=p)
        result = np.empty(self.num_samples, dtype=np.int64)
        for k, members in enumerate(self._members):
            where = np.flatnonzero(drawn == k)
            order = rng.permutation(members)
            result[where] = order[np.arange(len(where)) % len(order)]
        return result

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices(self.epoch).tolist())
