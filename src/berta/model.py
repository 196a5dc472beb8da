"""The encoder of BERT, RoBERTa and XLM-R, and its task models. One file, top to bottom:

    token ids -> Embeddings -> num_layers x Layer(SelfAttention, FeedForward) -> heads

Each sub-layer is post-LayerNorm: `norm(x + dropout(sublayer(x)))`, as in BERT and RoBERTa.

Padding-free execution. A padded batch of (batch, seq) ids usually holds far fewer real tokens than
batch * seq. The projections, feed-forward blocks and LayerNorms work token by token, so berta gathers the real
tokens into a packed (tokens, hidden) tensor and runs them there; only attention needs the (batch, seq) layout,
so the packed queries, keys and values are scattered into it just for `scaled_dot_product_attention`, with a
key mask. Outputs equal those of the padded computation (the padding rows of the padded computation are
never read by real tokens); padding rows of `last_hidden_state` are zero.

Attention by length groups. One grid for the whole batch makes every row as long as the longest: a batch of
natural texts does two to three times the attention work it needs. So the batch's rows are sorted by length
and cut into groups of similar length (`length_groups`: the cut that minimises padded tokens plus a fixed cost
per group), and each group attends in its own grid, as long as its longest row. The packed rows keep their
order: one gather builds every group's grid and one scatter brings the outputs back. The
keys of a query are the same set either way, so the outputs are those of the one-grid computation up to float
rounding. Traced exports (ONNX) and `output_attentions=True` keep the one grid: a trace cannot hold a cut that
depends on the data, and attention maps are asked for in the batch's (batch, seq) layout.

Row counts for oneDNN. In bfloat16 or int8 on CPU the projections run on oneDNN kernels built for each input shape
(several milliseconds each, then cached), and packed rows give nearly every natural batch a row count of its own. So
there the grouped path rounds the row count up to one of 16 steps per power of two (`padded_row_count`, at most 1/16
more rows), adding rows that no real token reads: kernels are built once per step instead of once per batch.

Positions follow one rule for every family: real tokens are numbered consecutively from `position_offset`,
padding gets `position_offset - 1` (clamped at 0). With offset 2 this is fairseq's `make_positions` (RoBERTa,
XLM-R: positions start at 2, pads keep 1); with offset 0 it is BERT's 0, 1, 2, ... — and both stay right for
left-padded batches, because numbering starts at each row's first real token.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from berta.config import ACTIVATIONS, IGNORE_INDEX, EncoderConfig


@dataclass
class EncoderOutput:
    """What every berta model returns; fields a model does not compute stay None."""

    last_hidden_state: Tensor | None = None  # (batch, seq, hidden); zeros at padding
    pooler_output: Tensor | None = None  # (batch, hidden)
    logits: Tensor | None = None  # task-dependent, see each model
    start_logits: Tensor | None = None  # (batch, seq) — question answering
    end_logits: Tensor | None = None  # (batch, seq)
    loss: Tensor | None = None
    attentions: tuple[Tensor, ...] | None = None  # per layer: (batch, heads, seq, seq) softmax probabilities


def _activation(name: str):
    if name == "gelu":
        return F.gelu  # exact (erf) GELU, as BERT and RoBERTa were trained
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    if name == "silu":
        return F.silu
    raise ValueError(f"hidden_act {name!r} is not supported; expected one of {ACTIVATIONS}")


# The checkpoint writer (`berta.checkpoints.hf`) reads the task registry, which imports this file; so the
# writer registers itself here when the package is imported, and the import graph stays one-way.
_CHECKPOINT_WRITERS: list[Callable[[nn.Module, Path], None]] = []


def register_checkpoint_writer(writer: Callable[[nn.Module, Path], None]) -> None:
    """Set the function behind `model.save(path)` (done once, by `berta.checkpoints.hf`)."""
    _CHECKPOINT_WRITERS[:] = [writer]


def save_checkpoint(model: nn.Module, path: str | Path) -> None:
    if not _CHECKPOINT_WRITERS:
        raise RuntimeError("no checkpoint writer registered: import berta (berta.checkpoints.hf registers it)")
    _CHECKPOINT_WRITERS[0](model, Path(path))


# The fixed cost of one more attention group (its scatter, kernel call and gather), in padded row-tokens: a
# group is split off only when that saves more padding than this. Chosen from MiniLM measurements on CPU.
GROUP_COST_TOKENS = 96
# Packed row counts are rounded up to one of this many steps per power of two when the projections run on
# kernels built per shape (see `TokenLayout`): at most 1/16 more rows, and 16 distinct counts per octave.
ROW_STEPS_PER_OCTAVE = 16


def padded_row_count(rows: int) -> int:
    """`rows` rounded up to the next multiple of its power of two / ROW_STEPS_PER_OCTAVE (a step of at least 16).

    Example:
        >>> [padded_row_count(n) for n in (1, 16, 17, 100, 1000, 1024, 1025)]
        [16, 16, 32, 112, 1024, 1024, 1088]
    """
    step = max(16, (1 << max(rows.bit_length() - 1, 0)) // ROW_STEPS_PER_OCTAVE)
    return -(-rows // step) * step


def padded_row_counts(most: int) -> list[int]:
    """Every row count `padded_row_count` gives for 1..most.

    Example:
        >>> padded_row_counts(300)
        [16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240, 256, 272, 288, 304]
    """
    counts = [padded_row_count(1)]
    while counts[-1] < most:
        counts.append(padded_row_count(counts[-1] + 1))
    return counts


@dataclass
class AttentionGroup:
    """Rows of similar length that attend in one (rows, length) grid; see the module docstring."""

    offset: int  # the group's cells are offset : offset + rows * length of the groups' cell tensor
    rows: int
    length: int  # the longest row: the grid's width
    key_mask: Tensor | None  # (rows, 1, 1, length); None when every row is `length` long


@dataclass
class AttentionGroups:
    """The grids of every group, laid end to end as one tensor of cells, and the way there and back."""

    groups: list[AttentionGroup]
    gather: Tensor  # (cells,) the packed row each cell reads; padding cells repeat their row's last token
    scatter: Tensor | None  # (rows,) the cell of each packed row; None when the cells are the rows themselves


def length_groups(lengths: list[int], cost: int = GROUP_COST_TOKENS) -> list[tuple[int, int]]:
    """Cut lengths sorted longest first into groups, as (first, stop) index ranges, minimising the padded
    tokens of all groups plus `cost` per group (dynamic programming over the distinct lengths).

    Example:
        >>> length_groups([50, 48, 47, 12, 10, 9, 9], cost=32)
        [(0, 3), (3, 7)]
        >>> length_groups([50, 48, 47, 12, 10, 9, 9], cost=1000)
        [(0, 7)]
    """
    distinct: list[int] = []  # boundaries where the length changes: a group never splits equal lengths
    for index, length in enumerate(lengths):
        if index == 0 or length != lengths[index - 1]:
            distinct.append(index)
    count = len(lengths)
    best = [0.0] + [math.inf] * len(distinct)  # best[j]: cost of rows before distinct[j] (or all, at the end)
    cut = [0] * (len(distinct) + 1)
    ends = distinct[1:] + [count]
    for j, end in enumerate(ends, start=1):
        for i in range(j):
            first = distinct[i]
            value = best[i] + (end - first) * lengths[first] + cost
            if value < best[j]:
                best[j], cut[j] = value, i
    groups, j = [], len(distinct)
    while j > 0:
        i = cut[j]
        groups.append((distinct[i], ends[j - 1]))
        j = i
    return groups[::-1]


class TokenLayout:
    """Where the rows of a flat (rows, hidden) tensor sit in the (batch, seq) grid.

    Padded mode: rows == batch * seq. Packed mode: the first `tokens` rows are the real tokens, `index` holds
    their flat positions in the grid, in row-major order; with `grouped`, `groups` says how they attend (see the
    module docstring).

    `pad_rows` (grouped packed mode only) appends `extra_rows` rows whose inputs are zeros, so that `rows` is
    `padded_row_count(tokens)`. oneDNN builds its bfloat16 and int8 matmul kernels for each row count it meets
    (a few milliseconds each, longer than the product itself here) and caches them by shape; natural batches
    have a new token count nearly every time, so without this every batch pays for new kernels. The extra rows
    are computed like any other and dropped at the end; no real token attends to them.
    """

    def __init__(self, attention_mask: Tensor, packed: bool, grouped: bool = False, pad_rows: bool = False):
        self.batch, self.seq = attention_mask.shape
        self.mask = attention_mask.bool()  # (batch, seq)
        has_padding = not bool(self.mask.all())
        self.index: Tensor | None = None
        self.groups: AttentionGroups | None = None
        self.tokens = self.batch * self.seq
        self.extra_rows = 0
        if packed and has_padding:
            self.index = self.mask.flatten().nonzero().squeeze(1)
            self.tokens = self.index.numel()
            if grouped and self.batch > 1:
                if pad_rows and self.tokens:
                    self.extra_rows = padded_row_count(self.tokens) - self.tokens
                self._group()
        self.rows = self.tokens + self.extra_rows
        # SDPA key mask, broadcast over heads and queries; None when nothing is padded (fastest kernel).
        self.key_mask = self.mask[:, None, None, :] if has_padding else None

    def _group(self) -> None:
        mask, device = self.mask, self.mask.device
        lengths = mask.sum(dim=1)
        lengths_list = lengths.tolist()
        order = sorted((row for row in range(self.batch) if lengths_list[row]), key=lambda row: -lengths_list[row])
        if not order:  # every row is padding: nothing attends
            return
        sorted_lengths = [lengths_list[row] for row in order]
        row_start = lengths.cumsum(0) - lengths  # each row's first packed row (packed rows stay row-major)
        groups, gathers, row_cell = [], [], torch.zeros(self.batch, dtype=torch.long, device=device)
        offset = 0
        for first, stop in length_groups(sorted_lengths):
            rows = torch.tensor(order[first:stop], dtype=torch.long, device=device)
            width, count = sorted_lengths[first], stop - first
            key_mask = None
            slot = torch.arange(width, device=device)
            if sorted_lengths[stop - 1] != width:
                key_mask = (slot < lengths[rows][:, None])[:, None, None, :]
            slot = torch.minimum(slot[None, :], lengths[rows][:, None] - 1)  # (count, width)
            gathers.append((row_start[rows][:, None] + slot).flatten())
            row_cell[rows] = offset + torch.arange(count, device=device) * width
            groups.append(AttentionGroup(offset, count, width, key_mask))
            offset += count * width
        gather = torch.cat(gathers) if len(gathers) > 1 else gathers[0]
        scatter = None
        if offset != self.tokens or len(groups) > 1 or self.extra_rows:
            token_row = self.index // self.seq
            rank = (mask.cumsum(dim=1) - 1).flatten()[self.index]  # each token's place among its row's tokens
            scatter = row_cell[token_row] + rank
            if self.extra_rows:  # the extra rows read cell 0: any cell will do, nothing reads them back
                scatter = torch.cat([scatter, scatter.new_zeros(self.extra_rows)])
        self.groups = AttentionGroups(groups, gather, scatter)

    def select(self, grid: Tensor) -> Tensor:
        """(batch, seq, ...) -> (rows, ...); the extra rows are zeros (id 0, position 0, False)."""
        flat = grid.reshape(self.batch * self.seq, *grid.shape[2:])
        if self.index is None:
            return flat
        rows = flat.index_select(0, self.index)
        if self.extra_rows:
            rows = torch.cat([rows, rows.new_zeros(self.extra_rows, *rows.shape[1:])])
        return rows

    def to_grid(self, rows: Tensor) -> Tensor:
        """(rows, ...) -> (batch, seq, ...), zeros where no row lands."""
        if self.index is not None:
            rows = rows[: self.tokens]
            full = rows.new_zeros(self.batch * self.seq, *rows.shape[1:])
            rows = full.index_copy_(0, self.index, rows)  # in place: the out-of-place form copies `full` first
        return rows.view(self.batch, self.seq, *rows.shape[1:])


class Embeddings(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.words = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        # RoBERTa's position table reserves the padding row too (fairseq LearnedPositionalEmbedding).
        position_padding = config.pad_token_id if config.position_offset else None
        self.positions = nn.Embedding(config.max_positions, config.hidden_size, padding_idx=position_padding)
        self.token_types = nn.Embedding(config.type_vocab_size, config.hidden_size) if config.type_vocab_size else None
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, input_ids: Tensor, position_ids: Tensor, token_type_ids: Tensor | None) -> Tensor:
        """Flat (rows,) ids -> (rows, hidden)."""
        hidden = self.words(input_ids) + self.positions(position_ids)
        if self.token_types is not None:
            if token_type_ids is None:
                hidden = hidden + self.token_types.weight[0]
            else:
                hidden = hidden + self.token_types(token_type_ids)
        return self.dropout(self.norm(hidden))


class SelfAttention(nn.Module):
    """Multi-head self-attention plus its output projection and residual LayerNorm."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.num_heads, self.head_size = config.num_heads, config.head_size
        # The query, key and value projections stacked in one (3 * hidden, hidden) weight: one matmul and, for
        # packed rows, one scatter into the (batch, seq) grid instead of three — a quarter less time in the
        # attention block on CPU. Checkpoints keep them apart (query, key, value); the name table splits them.
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.output = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention_dropout = config.attention_dropout
        self.dropout = nn.Dropout(config.hidden_dropout)

    def _heads(self, hidden: Tensor, layout: TokenLayout) -> tuple[Tensor, Tensor, Tensor]:
        """(rows, hidden) -> query, key, value, each (batch, heads, seq, head_size)."""
        grid = layout.to_grid(self.qkv(hidden))  # (batch, seq, 3 * hidden)
        heads = grid.view(layout.batch, layout.seq, 3, self.num_heads, self.head_size)
        query, key, value = heads.permute(2, 0, 3, 1, 4)  # views, each (batch, heads, seq, head_size)
        return query, key, value

    def forward(self, hidden: Tensor, layout: TokenLayout, output_attentions: bool) -> tuple[Tensor, Tensor | None]:
        if layout.groups is not None and not output_attentions:
            context = self._grouped(hidden, layout.groups)
            return self.norm(hidden + self.dropout(self.output(context))), None
        query, key, value = self._heads(hidden, layout)
        dropout = self.attention_dropout if self.training else 0.0
        probabilities = None
        if output_attentions:
            # The same attention written out, so the softmax probabilities can be returned.
            scores = query @ key.transpose(-1, -2) / math.sqrt(self.head_size)  # (batch, heads, seq, seq)
            if layout.key_mask is not None:
                scores = scores.masked_fill(~layout.key_mask, torch.finfo(scores.dtype).min)
            probabilities = scores.softmax(dim=-1)
            if layout.key_mask is not None:  # padding attends to nothing, so both paths return the same rows
                probabilities = probabilities * layout.mask[:, None, :, None]
            context = F.dropout(probabilities, dropout, self.training) @ value
        else:
            context = F.scaled_dot_product_attention(query, key, value, attn_mask=layout.key_mask, dropout_p=dropout)
        context = layout.select(context.transpose(1, 2).reshape(layout.batch, layout.seq, -1))  # (rows, hidden)
        return self.norm(hidden + self.dropout(self.output(context))), probabilities

    def _grouped(self, hidden: Tensor, groups: AttentionGroups) -> Tensor:
        """Attention group by group (see the module docstring): (rows, hidden) -> context (rows, hidden)."""
        cells = self.qkv(hidden).index_select(0, groups.gather)  # (cells, 3 * hidden): every group's grid
        dropout = self.attention_dropout if self.training else 0.0
        parts = []
        for group in groups.groups:
            grid = cells[group.offset : group.offset + group.rows * group.length]
            heads = grid.view(group.rows, group.length, 3, self.num_heads, self.head_size)
            query, key, value = heads.permute(2, 0, 3, 1, 4)  # each (rows, heads, length, head_size)
            context = F.scaled_dot_product_attention(query, key, value, attn_mask=group.key_mask, dropout_p=dropout)
            parts.append(context.transpose(1, 2).reshape(group.rows * group.length, -1))
        context = parts[0] if len(parts) == 1 else torch.cat(parts)
        return context if groups.scatter is None else context.index_select(0, groups.scatter)


class FeedForward(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.intermediate = nn.Linear(config.hidden_size, config.intermediate_size)
        self.output = nn.Linear(config.intermediate_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.activation = _activation(config.activation)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.norm(hidden + self.dropout(self.output(self.activation(self.intermediate(hidden)))))


class Layer(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.attention = SelfAttention(config)
        self.feed_forward = FeedForward(config)

    def forward(self, hidden: Tensor, layout: TokenLayout, output_attentions: bool) -> tuple[Tensor, Tensor | None]:
        hidden, probabilities = self.attention(hidden, layout, output_attentions)
        return self.feed_forward(hidden), probabilities


class Pooler(nn.Module):
    """BERT's pooler: tanh(dense(first token))."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, first_token: Tensor) -> Tensor:
        return torch.tanh(self.dense(first_token))


def position_ids_from_mask(attention_mask: Tensor, position_offset: int) -> Tensor:
    """Positions numbered from each row's first real token; see the module docstring.

    Example:
        >>> position_ids_from_mask(torch.tensor([[0, 1, 1, 1]]), 2).tolist()
        [[1, 2, 3, 4]]
    """
    mask = attention_mask.long()
    return (mask.cumsum(dim=1) * mask + position_offset - 1).clamp(min=0)


class Encoder(nn.Module):
    """The backbone: embeddings, layers and (optionally) BERT's pooler.

    Example:
        >>> model = Encoder(EncoderConfig.preset("tiny")).eval()
        >>> model(torch.tensor([[0, 31414, 2]])).last_hidden_state.shape
        torch.Size([1, 3, 64])
    """

    task = "encoder"

    def __init__(self, config: EncoderConfig, add_pooler: bool = True):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_layers))
        self.pooler = Pooler(config) if add_pooler else None
        # Padding-free execution (see the module docstring); set False to run the padded computation.
        self.padding_free = True

    def _check(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None) -> None:
        config = self.config
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
        if input_ids.shape[1] == 0 and input_ids.shape[0]:
            raise ValueError(
                f"input_ids has shape {tuple(input_ids.shape)}: rows without a single token position; "
                "the tokenizer's encodings hold at least the special tokens"
            )
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} differs from input_ids {tuple(input_ids.shape)}"
            )
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= config.vocab_size):
            raise ValueError(
                f"input_ids hold {int(input_ids.min())}..{int(input_ids.max())}, outside the vocabulary "
                f"(vocab_size {config.vocab_size}); was the text encoded with this model's tokenizer?"
            )
        if token_type_ids is not None:
            if token_type_ids.shape != input_ids.shape:
                raise ValueError(
                    f"token_type_ids shape {tuple(token_type_ids.shape)} differs from "
                    f"input_ids {tuple(input_ids.shape)}"
                )
            largest = int(token_type_ids.max()) if token_type_ids.numel() else 0
            if largest >= max(config.type_vocab_size, 1) or (token_type_ids.numel() and int(token_type_ids.min()) < 0):
                raise ValueError(
                    f"token_type_ids hold {largest}, but this {config.family} model has type_vocab_size "
                    f"{config.type_vocab_size} (valid ids: 0..{max(config.type_vocab_size, 1) - 1}); "
                    "RoBERTa and XLM-R take no segment ids"
                )

    def per_shape_kernels(self) -> bool:
        """Whether the projections run on kernels built per input shape: bfloat16, float16 or int8 on CPU (oneDNN;
        see `TokenLayout`). float32 on CPU runs MKL's, which are not."""
        if not self.layers:
            return False
        qkv = self.layers[0].attention.qkv
        # nn.Linear: its weight; Int8Linear: its int8 weight buffer; other replacements may hold no tensor.
        weight = next(itertools.chain(qkv.parameters(), qkv.buffers()), None)
        return weight is not None and weight.device.type == "cpu" and weight.dtype is not torch.float32

    def encode_rows(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[Tensor, TokenLayout, tuple[Tensor, ...] | None]:
        """The final hidden states as (rows, hidden) with their layout, and the attentions when asked.

        Heads that read only some tokens (the masked-LM head at masked positions) start from here.
        """
        config = self.config
        if attention_mask is None:
            attention_mask = input_ids.ne(config.pad_token_id)
        self._check(input_ids, attention_mask, token_type_ids)
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask, config.position_offset)
        longest = int(position_ids.max()) if position_ids.numel() else 0
        if longest >= config.max_positions:
            raise ValueError(
                f"sequence needs position {longest} but the position table has {config.max_positions} rows "
                f"(at most {config.max_length} tokens per sequence); truncate the input"
            )
        tracing = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        grouped = not (tracing or output_attentions)
        layout = TokenLayout(attention_mask, self.padding_free, grouped, pad_rows=grouped and self.per_shape_kernels())
        hidden = self.embeddings(
            layout.select(input_ids),
            layout.select(position_ids),
            None if token_type_ids is None else layout.select(token_type_ids),
        )  # (rows, hidden)
        attentions = []
        for layer in self.layers:
            hidden, probabilities = layer(hidden, layout, output_attentions)
            attentions.append(probabilities)
        return hidden, layout, tuple(attentions) if output_attentions else None

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        output_attentions: bool = False,
    ) -> EncoderOutput:
        """Encode a (batch, seq) batch. `attention_mask` defaults to `input_ids != pad_token_id`."""
        if attention_mask is None:
            attention_mask = input_ids.ne(self.config.pad_token_id)
        hidden, layout, attentions = self.encode_rows(
            input_ids, attention_mask, token_type_ids, position_ids, output_attentions
        )
        last_hidden_state = layout.to_grid(hidden)  # (batch, seq, hidden)
        if layout.index is None and layout.key_mask is not None:
            last_hidden_state = last_hidden_state * layout.mask[..., None]  # padding rows are zero in both paths
        output = EncoderOutput(last_hidden_state=last_hidden_state, attentions=attentions)
        if self.pooler is not None:
            output.pooler_output = self.pooler(first_tokens(last_hidden_state, attention_mask))
        return output

    def save(self, path: str | Path) -> None:
        """Write `config.json` + `model.safetensors` in the Hugging Face layout (opens in `transformers`)."""
        save_checkpoint(self, path)


def first_tokens(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """The first real token of each row ([CLS] / <s>), wherever padding puts it: (batch, hidden)."""
    first = attention_mask.long().argmax(dim=1)  # index of the first 1 per row
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), first]


class TaskModel(nn.Module):
    """An encoder with a task head. Subclasses set `task`, build `head` and compute `forward`."""

    task = ""

    def __init__(self, config: EncoderConfig, add_pooler: bool = False):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config, add_pooler=add_pooler)

    @property
    def padding_free(self) -> bool:
        return self.encoder.padding_free

    @padding_free.setter
    def padding_free(self, value: bool) -> None:
        self.encoder.padding_free = value

    def save(self, path: str | Path) -> None:
        """Write `config.json` + `model.safetensors` in the Hugging Face layout (opens in `transformers`)."""
        save_checkpoint(self, path)


class MaskedLMHead(nn.Module):
    """dense -> activation -> LayerNorm -> decoder tied to the word embeddings, plus its own bias."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.activation = _activation(config.activation)

    def forward(self, hidden: Tensor, word_embeddings: Tensor) -> Tensor:
        return F.linear(self.norm(self.activation(self.dense(hidden))), word_embeddings, self.bias)


class MaskedLM(TaskModel):
    """Masked language model.

    `logits` are (batch, seq, vocab); with `masked_positions` (a (batch, seq) bool tensor) only those tokens are
    scored and `logits` are (masked, vocab) in row-major order — the pretraining path, which skips the
    vocabulary projection for the ~85% of tokens that carry no label. `labels` use IGNORE_INDEX (-100) for "no label".
    """

    task = "masked-lm"

    def __init__(self, config: EncoderConfig):
        super().__init__(config)
        self.head = MaskedLMHead(config)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        output_attentions: bool = False,
        labels: Tensor | None = None,
        masked_positions: Tensor | None = None,
    ) -> EncoderOutput:
        hidden, layout, attentions = self.encoder.encode_rows(
            input_ids, attention_mask, token_type_ids, position_ids, output_attentions
        )
        output = EncoderOutput(attentions=attentions)
        word_embeddings = self.encoder.embeddings.words.weight
        if masked_positions is None:
            output.last_hidden_state = layout.to_grid(hidden)
            output.logits = self.head(output.last_hidden_state, word_embeddings)  # (batch, seq, vocab)
            targets = labels
        else:
            selected = hidden[layout.select(masked_positions)]  # (masked, hidden)
            output.logits = self.head(selected, word_embeddings)  # (masked, vocab)
            targets = None if labels is None else labels[masked_positions]
        if targets is not None:
            vocab = output.logits.shape[-1]
            output.loss = F.cross_entropy(
                output.logits.reshape(-1, vocab).float(), targets.reshape(-1), ignore_index=IGNORE_INDEX
            )
        return output


class BertClassificationHead(nn.Module):
    """BERT: dropout(pooler output) -> linear."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.classifier(self.dropout(pooled))


class RobertaClassificationHead(nn.Module):
    """RoBERTa: first token -> dropout -> dense -> tanh -> dropout -> out_proj (fairseq's classification head)."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, first_token: Tensor) -> Tensor:
        hidden = torch.tanh(self.dense(self.dropout(first_token)))
        return self.out_proj(self.dropout(hidden))


def _require_labels(config: EncoderConfig, task: str) -> None:
    if config.num_labels < 1:
        raise ValueError(f"a {task} model needs labels: set id2label in the config (num_labels >= 1)")


class SequenceClassifier(TaskModel):
    """Sequence (and sentence-pair) classification or regression: `logits` (batch, num_labels).

    The loss follows `config.problem_type` (inferred as `transformers` does when unset): cross-entropy for
    single-label, binary cross-entropy per label for multi-label, mean squared error for regression.
    """

    task = "classification"

    def __init__(self, config: EncoderConfig):
        _require_labels(config, self.task)
        super().__init__(config, add_pooler=config.pooler_classifier)
        self.head = BertClassificationHead(config) if config.pooler_classifier else RobertaClassificationHead(config)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        output_attentions: bool = False,
        labels: Tensor | None = None,
    ) -> EncoderOutput:
        if attention_mask is None:
            attention_mask = input_ids.ne(self.config.pad_token_id)
        output = self.encoder(input_ids, attention_mask, token_type_ids, position_ids, output_attentions)
        if self.config.pooler_classifier:
            output.logits = self.head(output.pooler_output)
        else:
            output.logits = self.head(first_tokens(output.last_hidden_state, attention_mask))
        if labels is not None:
            output.loss = self._loss(output.logits, labels)
        return output

    def _loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        problem = self.config.problem_type
        if problem is None:
            if self.config.num_labels == 1:
                problem = "regression"
            elif labels.dtype in (torch.long, torch.int):
                problem = "single_label_classification"
            else:
                problem = "multi_label_classification"
        if problem == "regression":
            return F.mse_loss(logits.squeeze(-1).float(), labels.float().view(-1))
        if problem == "multi_label_classification":
            return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        return F.cross_entropy(logits.float(), labels.view(-1))


class TokenClassifier(TaskModel):
    """Per-token classification (NER, POS): `logits` (batch, seq, num_labels); IGNORE_INDEX labels are ignored."""

    task = "tokens"

    def __init__(self, config: EncoderConfig):
        _require_labels(config, self.task)
        super().__init__(config)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        output_attentions: bool = False,
        labels: Tensor | None = None,
    ) -> EncoderOutput:
        output = self.encoder(input_ids, attention_mask, token_type_ids, position_ids, output_attentions)
        output.logits = self.classifier(self.dropout(output.last_hidden_state))
        if labels is not None:
            output.loss = F.cross_entropy(
                output.logits.reshape(-1, self.config.num_labels).float(), labels.reshape(-1),
                ignore_index=IGNORE_INDEX,
            )
        return output


class QuestionAnswering(TaskModel):
    """Extractive QA: `start_logits` and `end_logits`, each (batch, seq); padding gets the dtype's minimum."""

    task = "qa"

    def __init__(self, config: EncoderConfig):
        super().__init__(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        output_attentions: bool = False,
        start_positions: Tensor | None = None,
        end_positions: Tensor | None = None,
    ) -> EncoderOutput:
        if attention_mask is None:
            attention_mask = input_ids.ne(self.config.pad_token_id)
        output = self.encoder(input_ids, attention_mask, token_type_ids, position_ids, output_attentions)
        start_logits, end_logits = self.qa_outputs(output.last_hidden_state).unbind(dim=-1)
        padding = ~attention_mask.bool()  # padding is never an answer (transformers scores it; fairseq does not)
        if padding.any():
            start_logits = start_logits.masked_fill(padding, torch.finfo(start_logits.dtype).min)
            end_logits = end_logits.masked_fill(padding, torch.finfo(end_logits.dtype).min)
        output.start_logits, output.end_logits = start_logits.contiguous(), end_logits.contiguous()
        if start_positions is not None and end_positions is not None:
            # Positions outside the sequence (answer cut off by the window) are ignored, as in BERT's run_squad.
            ignored = start_logits.shape[1]
            start = F.cross_entropy(start_logits.float(), start_positions.clamp(0, ignored), ignore_index=ignored)
            end = F.cross_entropy(end_logits.float(), end_positions.clamp(0, ignored), ignore_index=ignored)
            output.loss = (start + end) / 2
        return output


class MultipleChoice(TaskModel):
    """Multiple choice (RACE, SWAG): every (context, choice) row is encoded, its pooled first token scored by one
    linear unit, and the scores of a question's choices compete in a softmax.

    Inputs are (batch, choices, seq); `logits` are (batch, choices); `labels` (batch,) index the right choice. As
    `transformers`' *ForMultipleChoice: BERT's pooler for both families, dropout `classifier_dropout` (BERT; else
    the hidden dropout) or the hidden dropout (RoBERTa family).
    """

    task = "multiple-choice"

    def __init__(self, config: EncoderConfig):
        super().__init__(config, add_pooler=True)
        bert_dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout
        self.dropout = nn.Dropout(bert_dropout if config.family == "bert" else config.hidden_dropout)
        self.classifier = nn.Linear(config.hidden_size, 1)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        output_attentions: bool = False,
        labels: Tensor | None = None,
    ) -> EncoderOutput:
        if input_ids.dim() != 3:
            raise ValueError(
                f"multiple choice takes input_ids of shape (batch, choices, seq), got {tuple(input_ids.shape)}"
            )
        batch, choices, seq = input_ids.shape

        def rows(tensor: Tensor | None) -> Tensor | None:  # (batch, choices, seq) -> (batch * choices, seq)
            return None if tensor is None else tensor.reshape(batch * choices, seq)

        output = self.encoder(
            rows(input_ids), rows(attention_mask), rows(token_type_ids), rows(position_ids), output_attentions
        )
        output.logits = self.classifier(self.dropout(output.pooler_output)).view(batch, choices)
        if labels is not None:
            output.loss = F.cross_entropy(output.logits.float(), labels.view(-1), ignore_index=IGNORE_INDEX)
        return output


def init_weights(model: nn.Module, config: EncoderConfig) -> nn.Module:
    """BERT's initialisation: normal(0, initializer_range) weights, zero biases, unit LayerNorms."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=config.initializer_range)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=config.initializer_range)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, MaskedLMHead):
            nn.init.zeros_(module.bias)
    return model
