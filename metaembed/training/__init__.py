"""Training: MMR losses, data loading, and the trainer that fits Meta Tokens + LoRA."""
