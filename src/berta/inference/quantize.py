"""Low precision for inference: bfloat16 weights and activations, and int8 matrix products that keep accuracy.

Why not `torch.ao.quantization.quantize_dynamic` (or onnxruntime's dynamic int8)? They give each activation
tensor one scale for the whole batch. BERT hidden states have a few outlier features and tokens far larger than
the rest, so one scale leaves the other tokens a handful of int8 steps: all-MiniLM-L6-v2 sentence embeddings
fall to a mean cosine of 0.94 (torch) and 0.96 (onnxruntime) against fp32, 0.90 for the worst sentence; the
scheme here keeps 0.997 (bench/low_precision.py). It is LLM.int8's vector-wise quantization (Dettmers et al.
2022, without the fp16 outlier split), as CTranslate2 ships it:

- weights: one scale per output channel (row of W), `scale = max|W_row| / 127`, symmetric, computed once;
- activations: one scale per token (row of X), `scale = max|x_row| / 127`, computed on the fly for each batch;
- the product in int8 with int32 accumulation, then `Y = acc * weight_scale * token_scale + bias` in float32,
  returned in the input's dtype. On CPU the product is oneDNN's int8 matmul on weights packed once for it
  (`torch.ops.onednn.qlinear_pointwise`: AMX or AVX-512 VNNI), which also applies the weight scales; it takes one
  activation scale per tensor, so each token's row is quantized with its own scale and handed over with scale 1,
  and the token scales are applied to its output. Traced
  exports (ONNX), other devices and builds without oneDNN use `torch._int_mm`, the same numbers: half the speed
  here, on weights in their plain layout.

Only the encoder layers' Linear layers are quantized: they are >95% of the inference FLOPs. Embeddings,
LayerNorms, attention (softmax over the scores), the pooler and the task heads keep the model's dtype, so a
classifier's logits come out of a float head.

    >>> model = berta.load("runs/sst2/model", dtype="bfloat16", quantize="int8")  # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# oneDNN's int8 matmul with packed weights (x86 builds of PyTorch; see the module docstring).
_ONEDNN = hasattr(torch.ops.onednn, "qlinear_pointwise") and torch.backends.mkldnn.is_available()
# oneDNN's float matmul on a weight packed for it.
_MKLDNN = hasattr(torch.ops.mkldnn, "_linear_pointwise") and torch.backends.mkldnn.is_available()

# The names `berta.load(dtype=...)` accepts beside torch dtypes.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
QUANTIZATIONS = ("int8",)


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """A torch dtype from a name ("bfloat16", "bf16", "float32", ...) or a torch dtype.

    Example:
        >>> resolve_dtype("bfloat16")
        torch.bfloat16
    """
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)} or a torch.dtype")
    return DTYPES[dtype]


class Int8Linear(nn.Module):
    """A Linear layer with int8 weights (one scale per output channel) and int8 activations (one per token).

    Example:
        >>> linear = nn.Linear(64, 32)
        >>> x = torch.randn(5, 64)
        >>> torch.nn.functional.cosine_similarity(Int8Linear.from_linear(linear)(x), linear(x)).min() > 0.999
        tensor(True)
    """

    def __init__(self, weight: Tensor, weight_scale: Tensor, bias: Tensor | None):
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        # Stored transposed, (in, out) with out contiguous: the column-major B operand oneDNN's int8 GEMM
        # takes without a copy (a row-major B costs a transpose per call, 5x slower here).
        self.register_buffer("weight_t", weight.t())  # (in, out) int8
        self.register_buffer("weight_scale", weight_scale.float())  # (out,)
        self.register_buffer("bias", None if bias is None else bias.float())  # (out,)
        self._packed: Tensor | None = None  # the weight in oneDNN's blocked layout, made on first CPU use
        self._zero_points: Tensor | None = None  # the weight's zero points for oneDNN: all 0 (symmetric)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        """Quantize `linear`'s weight per output channel (symmetric, scale = max |row| / 127)."""
        weight = linear.weight.detach().float()  # (out, in)
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127  # (out,)
        quantized = torch.round(weight / scale[:, None]).to(torch.int8)
        bias = None if linear.bias is None else linear.bias.detach()
        return cls(quantized, scale, bias)

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # `model.to(torch.bfloat16)` casts every floating tensor; here it must move the buffers only: scales
        # rounded to bfloat16's 8 bits would scale whole output channels wrong by up to 0.4%.
        device = fn(torch.zeros((), device=self.weight_scale.device)).device
        for name, buffer in self._buffers.items():
            if buffer is not None:
                self._buffers[name] = buffer.to(device)
        return self

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu" and _ONEDNN and not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            return self._forward_onednn(x)
        # Each step is one vectorized pass; mixed-dtype forms (int32 * float32, bf16 / float32) and
        # `linalg.vector_norm(inf)` take slower paths in eager PyTorch, 2-7x here.
        rows = x.reshape(-1, self.in_features).float()  # (tokens, in)
        # One scale per token: the largest magnitude of its row maps to 127.
        token_scale = rows.abs().amax(dim=1, keepdim=True).clamp_(min=1e-12).div_(127)  # (tokens, 1)
        quantized = rows.mul(token_scale.reciprocal()).round_().to(torch.int8)  # mul: 1.2-1.4x div here
        accumulated = torch._int_mm(quantized, self.weight_t)  # (tokens, out) int32
        output = accumulated.float().mul_(token_scale).mul_(self.weight_scale)
        if self.bias is not None:
            output.add_(self.bias)
        return output.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def _forward_onednn(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, self.in_features).float()  # (tokens, in)
        # max |x| of each row as max(max x, -min x): two reads and no (tokens, in) temporary: 1.1-1.5x abs().amax() here
        largest = torch.maximum(rows.amax(dim=1, keepdim=True), rows.amin(dim=1, keepdim=True).neg_())
        token_scale = largest.clamp_(min=1e-12).div_(127)  # (tokens, 1)
        quantized = rows.mul(token_scale.reciprocal()).round_().to(torch.int8)
        if self._packed is None:
            weight = self.weight_t.t().contiguous()  # (out, in) int8
            self._packed = torch.ops.onednn.qlinear_prepack(weight, [rows.shape[0], self.in_features])
            self._zero_points = torch.zeros(self.out_features, dtype=torch.long)
        output = torch.ops.onednn.qlinear_pointwise(
            quantized, 1.0, 0, self._packed, self.weight_scale, self._zero_points, None, 1.0, 0, torch.float32,
            "none", [], "")  # (tokens, out) = acc * weight_scale
        if self.bias is None:
            output.mul_(token_scale)
        else:  # bias + output * token_scale, in place: one pass where mul_ then add_ take two
            torch.addcmul(self.bias, output, token_scale, out=output)
        return output.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel x per-token"


class PackedLinear(nn.Linear):
    """`nn.Linear` that, for bfloat16 inference on CPU, multiplies on a copy of its weight packed once for oneDNN.

    `F.linear` hands oneDNN the weight in its plain layout on every call; a copy in oneDNN's blocked layout
    (`torch.ops.mkldnn._reorder_linear_weight`, as PyTorch's CPU inference passes make) and
    `torch.ops.mkldnn._linear_pointwise` give the same numbers and make MiniLM's bfloat16 forward 10-14% faster.
    The copy is remade whenever the weight changes (another tensor or an in-place update) and is never saved.
    Autograd, traced exports (ONNX) and other dtypes or devices take `F.linear`. `berta.load(dtype="bfloat16")`
    puts these in the encoder layers (`pack_bfloat16`).

    Example:
        >>> linear = nn.Linear(64, 32).to(torch.bfloat16)
        >>> x = torch.randn(5, 64, dtype=torch.bfloat16)
        >>> with torch.inference_mode():
        ...     torch.equal(PackedLinear.from_linear(linear)(x), linear(x))
        True
    """

    _packed: tuple[tuple[int, int], Tensor] | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> PackedLinear:
        """A PackedLinear holding `linear`'s own parameters (shared, not copied)."""
        packed = cls.__new__(cls)
        nn.Module.__init__(packed)
        packed.in_features, packed.out_features = linear.in_features, linear.out_features
        packed.weight, packed.bias = linear.weight, linear.bias
        return packed

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.weight, self.bias
        if not (
            x.dtype is torch.bfloat16
            and weight.dtype is torch.bfloat16
            and (bias is None or bias.dtype is torch.bfloat16)
            and x.device.type == "cpu"
            and _MKLDNN
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())
        ):
            return nn.functional.linear(x, weight, bias)
        key = (weight.data_ptr(), weight._version)
        if self._packed is None or self._packed[0] != key:
            self._packed = (key, torch.ops.mkldnn._reorder_linear_weight(weight.detach()))
        rows = x.reshape(-1, self.in_features)
        output = torch.ops.mkldnn._linear_pointwise(rows, self._packed[1], bias, "none", [], "")
        return output.view(*x.shape[:-1], self.out_features)


def _encoder(model: nn.Module) -> nn.Module:
    return model if getattr(model, "task", "") == "encoder" else model.encoder


def quantize(model: nn.Module, method: str = "int8") -> nn.Module:
    """Replace the Linear layers of `model`'s encoder layers by `Int8Linear`, in place; returns `model`.

    Call it on float32 weights (`berta.load` does, before any dtype cast).

    Example:
        >>> import berta
        >>> model = quantize(berta.create(berta.EncoderConfig.preset("tiny")))
        >>> type(model.layers[0].feed_forward.intermediate).__name__
        'Int8Linear'
    """
    if method not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {method!r}; expected one of {list(QUANTIZATIONS)}")
    layers = _encoder(model).layers
    for module in list(layers.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, Int8Linear.from_linear(child))
    return model


def pack_bfloat16(model: nn.Module) -> nn.Module:
    """Replace the `nn.Linear` layers of `model`'s encoder layers by `PackedLinear` (same parameters), in place.

    Example:
        >>> import berta
        >>> model = pack_bfloat16(berta.create(berta.EncoderConfig.preset("tiny")))
        >>> type(model.layers[0].attention.qkv).__name__
        'PackedLinear'
    """
    for module in list(_encoder(model).layers.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, name, PackedLinear.from_linear(child))
    return model


def warm_up(model: nn.Module, most_rows: int) -> int:
    """Build oneDNN's kernels for every row count the encoder layers' projections can meet up to `most_rows`
    (`berta.model.padded_row_counts`), so the first batch of each size does not wait for them; returns how many
    row counts it ran, 0 where the projections do not run on kernels built per shape (float32, or not on CPU).

    The layers share their shapes, so the first layer's four projections are run, on zeros, once per row count:
    on MiniLM with 2 CPU threads, up to 4,096 rows (what `berta serve` warms), 2.6 s in bfloat16 and 1.4 s in int8.

    Example:
        >>> import berta
        >>> warm_up(berta.create(berta.EncoderConfig.preset("tiny")).to(torch.bfloat16), 100)
        7
    """
    from berta.model import padded_row_counts

    encoder = _encoder(model)
    if not encoder.per_shape_kernels():
        return 0
    layer = encoder.layers[0]
    projections = (layer.attention.qkv, layer.attention.output, layer.feed_forward.intermediate,
                   layer.feed_forward.output)
    weight = encoder.embeddings.words.weight  # the dtype and device of the activations
    counts = padded_row_counts(most_rows)
    with torch.inference_mode():
        for rows in counts:
            for projection in projections:
                projection(torch.zeros(rows, projection.in_features, dtype=weight.dtype, device=weight.device))
    return len(counts)
