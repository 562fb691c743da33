"""The mteb 2.x model over our encode path: instructions per the e5-mistral convention, cached rows.

mteb hands ``encode`` a DataLoader of its own batches; we gather the texts and give them to
``TextEncoder.encode`` in one call, which sorts them by length into batches (little padding) and
restores the order. Queries (``prompt_type == query``) and symmetric tasks (``None``: STS,
classification, clustering) read ``Instruct: {instruction}\\nQuery: {text}`` through the same
``format_query`` as training; documents read their text alone. With ``dim`` the encoder hands
mteb the first ``dim`` dimensions (Matryoshka; mteb scores by cosine, so no renormalising).
"""

from __future__ import annotations

import numpy as np
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.types import PromptType

from ..data.tokens import format_query
from .cache import EmbeddingCache
from .models import LoadedModel


class MtebEncoder(AbsEncoder):
    def __init__(
        self,
        model: LoadedModel,
        name: str,
        revision: str,
        cache: EmbeddingCache | None,
        progress: bool = True,
        dim: int | None = None,
    ):
        self.model, self.cache, self.progress, self.dim = model, cache, progress, dim
        self.mteb_model_meta = ModelMeta.create_empty(
            overwrites=dict(
                name=name,
                revision=revision,
                similarity_fn_name=ScoringFunction.COSINE,
                use_instructions=model.instructions,
                framework=["PyTorch"],
            )
        )

    def instruction(self, task_metadata, prompt_type: PromptType | None) -> str:
        """The task's instruction for this side, or '' (documents; models without instructions)."""
        if prompt_type == PromptType.document or not self.model.instructions:
            return ""
        return self.get_instruction(task_metadata, prompt_type)

    def embed(self, texts: list[str], instruction: str, document: bool, task: str, split: str) -> np.ndarray:
        """[len(texts), d] float32; read through the cache when there is one."""
        settings = self.model.encoder.settings
        max_len = settings.doc_max_len if document else settings.query_max_len
        formatted = [format_query(t, instruction) for t in texts]

        def encode(new: list[str]) -> np.ndarray:
            return self.model.encoder.encode(new, max_len, progress=self.progress)

        emb = (
            encode(formatted)
            if self.cache is None
            else self.cache.get_or_encode(task, split, formatted, max_len, encode)
        )
        return emb[:, : self.dim] if self.dim else emb

    def encode(
        self,
        inputs,
        *,
        task_metadata,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs,
    ) -> np.ndarray:
        texts = [text for batch in inputs for text in batch["text"]]
        return self.embed(
            texts,
            self.instruction(task_metadata, prompt_type),
            prompt_type == PromptType.document,
            task_metadata.name,
            hf_split,
        )
