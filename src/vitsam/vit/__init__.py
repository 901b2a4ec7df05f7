"""Half one: a Vision Transformer classifier trained from scratch."""
