"""Hard-negative mining: a teacher ranks the corpus per query (exact FAISS inner product or BM25),
then negatives are drawn from a rank window with positives and likely false negatives removed."""
