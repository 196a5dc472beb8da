"""berta."""
