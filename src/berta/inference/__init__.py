"""Inference: predictions from trained models (fill-mask, task pipelines), serving and export."""
