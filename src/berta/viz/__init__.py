"""Pictures of models: attention heatmaps (PNG) and the offline attention viewer (HTML)."""

from berta.viz.attention import (
    AttentionMaps,
    attention_html,
    attention_maps,
    attention_png,
    merge_subwords,
    render_html,
    render_png,
    token_labels,
    word_groups,
)

__all__ = [
    "AttentionMaps",
    "attention_html",
    "attention_maps",
    "attention_png",
    "merge_subwords",
    "render_html",
    "render_png",
    "token_labels",
    "word_groups",
]
