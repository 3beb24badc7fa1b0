"""Training loops: Fast, Slow and distillation."""
