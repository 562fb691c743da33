"""The files beside the weights that make a folder servable as the run embedded: config.json, the
tokenizer, and the sentence-transformers layout.

Apart from the weights (``shards``) so that any full-weight model made from a run (a merge, a soup
of adapters) is laid out the same way. The tokenizer is made to append EOS itself when the model
pools the last token, so plain transformers and sentence-transformers see the EOS that training
appended by hand; the sentence-transformers layout holds a Transformer with per-task query/document
lengths, pooling, Normalize, and the query prompt ``Instruct: ...\\nQuery: ``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..config import ModelConfig
from ..data.tokens import format_query
from ..io import atomic_write_json
from ..model import DTYPES, load_tokenizer

DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
ST_POOLING = {"last": "lasttoken", "mean": "mean", "cls": "cls"}


def write_config(base: Path, out: Path, dtype: str) -> int:
    """config.json (and generation_config.json) of the base with the output dtype; returns hidden size."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(base))
    config.dtype = DTYPES[dtype]
    config.save_pretrained(str(out))
    if (base / "generation_config.json").exists():
        shutil.copy(base / "generation_config.json", out / "generation_config.json")
    return config.get_text_config().hidden_size


def write_tokenizer(adapter: Path, out: Path, meta: dict) -> None:
    """The run's tokenizer; with last-token pooling its post-processor appends EOS after truncation,
    which reproduces sfr-ds's hand-appended EOS for every consumer of the folder."""
    from tokenizers import processors

    tok = load_tokenizer(ModelConfig(name_or_path=str(adapter)))
    if meta["append_eos"]:
        eos = processors.TemplateProcessing(
            single=f"$A {tok.eos_token}",
            pair=f"$A $B {tok.eos_token}",
            special_tokens=[(tok.eos_token, tok.eos_token_id)],
        )
        current = tok.backend_tokenizer.post_processor
        tok.backend_tokenizer.post_processor = processors.Sequence([current, eos]) if current else eos
    tok.model_max_length = meta["doc_max_len"]
    tok.save_pretrained(str(out))


def write_sentence_transformers(out: Path, meta: dict, hidden_size: int, instruction: str) -> None:
    """modules.json and module configs as sentence-transformers 6.2 saves them (tested by loading)."""
    st = "sentence_transformers."
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": st + "base.modules.transformer.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": st + "sentence_transformer.modules.pooling.Pooling",
        },
    ]
    if meta["normalize"]:
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": st + "base.modules.normalize.Normalize"}
        )
        atomic_write_json(
            out / "2_Normalize" / "config.json",
            {"module_input_name": "sentence_embedding", "module_output_name": "sentence_embedding"},
        )
    atomic_write_json(out / "modules.json", modules)
    atomic_write_json(
        out / "sentence_bert_config.json",
        {
            "transformer_task": "feature-extraction",
            "modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
            "module_output_name": "token_embeddings",
            "query_length": meta["query_max_len"],
            "document_length": meta["doc_max_len"],
        },
    )
    # include_prompt must stay true: last-token pooling reads the last position the mask keeps
    atomic_write_json(
        out / "1_Pooling" / "config.json",
        {
            "embedding_dimension": hidden_size,
            "pooling_mode": ST_POOLING[meta["pooling"]],
            "include_prompt": True,
        },
    )
    # the widths a Matryoshka run trained, for whoever picks a truncate_dim (ST reads no such key)
    matryoshka = {"matryoshka_dims": meta["matryoshka_dims"]} if meta.get("matryoshka_dims") else {}
    atomic_write_json(
        out / "config_sentence_transformers.json",
        {
            **matryoshka,
            "model_type": "SentenceTransformer",
            "prompts": {"query": format_query("", instruction), "document": ""},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine" if meta["normalize"] else "dot",
            "requirements": {
                "sentence-transformers": {
                    "specifier": ">=6.2",
                    "reason": "per-task query_length/document_length",
                }
            },
        },
    )
