"""Training data: records, batch plans, hard negatives, tokenization."""
