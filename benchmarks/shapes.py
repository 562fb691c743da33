"""Model shapes the benchmarks and tests build from a config: random weights, nothing downloaded."""


def decoder(model_type: str, layers: int, hidden: int, ffn: int, heads: int, kv_heads: int, **extra) -> dict:
    """A ``model.random_init`` mapping for a decoder of this shape (Mistral/Llama style)."""
    extra = {"vocab_size": 32000, "max_position_embeddings": 32768, **extra}
    return dict(
        model_type=model_type,
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        **extra,
    )


MISTRAL_7B = decoder("mistral", 32, 4096, 14336, 32, 8, rope_theta=10000.0, sliding_window=4096)
# Mistral's proportions (GQA 4:1, MLP 3.5x) at 1/16 of the width and 1/8 of the depth
MISTRAL_SMALL = decoder("mistral", 4, 256, 896, 8, 2, rope_theta=10000.0, sliding_window=4096)
# configs/tiny.yaml's backbone
TOKEN_IDS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=3)
TINY_MISTRAL = decoder("mistral", 2, 64, 128, 4, 2, vocab_size=2048, max_position_embeddings=512, **TOKEN_IDS)
# TinyLlama-1.1B's shape: a base model big enough for merge's memory to show
LLAMA_1B = decoder("llama", 22, 2048, 5632, 32, 4, max_position_embeddings=2048)
