"""The torch side shared by the embedding and rerank pyfuncs: load a sentence-transformers model from
its logged artifact, tokenise (thread-safe, in the request threads) and run padded batches (on the
batcher's model thread only)."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.base.settings import pick_device

BI_ENCODER, CROSS_ENCODER = "bi-encoder", "cross-encoder"


@dataclass(frozen=True, slots=True)
class Tokenized:
    ids: list[int]
    type_ids: list[int]

    def __len__(self) -> int:
        return len(self.ids)


def detect_kind(model_dir: str | Path) -> str:
    """cross-encoder or bi-encoder, from the files of a sentence-transformers / transformers folder."""
    model_dir = Path(model_dir)
    st_config = model_dir / "config_sentence_transformers.json"
    if st_config.is_file():
        model_type = json.loads(st_config.read_text()).get("model_type")
        if model_type in ("CrossEncoder", "SentenceTransformer"):
            return CROSS_ENCODER if model_type == "CrossEncoder" else BI_ENCODER
    if (model_dir / "modules.json").is_file():
        return BI_ENCODER
    hf_config = model_dir / "config.json"
    architectures = []
    if hf_config.is_file():
        architectures = json.loads(hf_config.read_text()).get("architectures") or []
    return CROSS_ENCODER if any(a.endswith("ForSequenceClassification") for a in architectures) else BI_ENCODER


def load_model(model_dir: str | Path, kind: str, device: str | None = None):
    """Load without touching the hub: the artifact holds every file the model needs."""
    from sentence_transformers import CrossEncoder, SentenceTransformer

    cls = CrossEncoder if kind == CROSS_ENCODER else SentenceTransformer
    model = cls(str(model_dir), device=device or pick_device(), local_files_only=True)
    model.eval()
    return model


class TransformerRunner:
    """One loaded sentence-transformers model (bi- or cross-encoder)."""

    def __init__(self, model, kind: str):
        if model.tokenizer is None or not hasattr(model.tokenizer, "backend_tokenizer"):
            raise ValueError(f"{type(model).__name__} has no fast (tokenizers) tokenizer; serving needs one")
        self.model = model
        self.max_length = int(model.max_seq_length or model.tokenizer.model_max_length)
        self._pad_id = model.tokenizer.pad_token_id or 0
        self._uses_type_ids = "token_type_ids" in model.tokenizer.model_input_names
        # A private copy configured once: a tokenizers.Tokenizer is safe to share between threads as
        # long as nobody changes its truncation/padding, which per-call HF arguments would do.
        self._tokenizer = copy.deepcopy(model.tokenizer.backend_tokenizer)
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(self.max_length, strategy="longest_first")
        # tokens the post-processor adds around one text (e.g. [CLS] ... [SEP])
        post = self._tokenizer.post_processor
        self.special_tokens = post.num_special_tokens_to_add(False) if post is not None else 0
        if kind == CROSS_ENCODER and model.num_labels != 1:
            raise ValueError(f"a rerank cross-encoder needs one output label, this one has {model.num_labels}")

    def tokenize(self, texts: list[str]) -> list[Tokenized]:
        """Texts longer than the model's limit lose their tail; the head (where a prefix sits) stays."""
        return [Tokenized(e.ids, e.type_ids) for e in self._tokenizer.encode_batch(texts)]

    def tokenize_pairs(self, pairs: list[tuple[str, str]]) -> list[Tokenized]:
        return [Tokenized(e.ids, e.type_ids) for e in self._tokenizer.encode_batch(pairs)]

    def first_tokens(self, texts: list[str], n: int) -> list[str]:
        """Each text up to the end of its n-th token (special tokens not counted), the way Cohere's
        max_tokens_per_doc cuts a document. Cut as text, so the model's own pair / prefix tokenisation still
        applies to what is left."""
        encoded = self._tokenizer.encode_batch(texts, add_special_tokens=False)
        return [t[:e.offsets[n - 1][1]] if len(e.ids) > n else t for t, e in zip(texts, encoded, strict=True)]

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` alone, without special tokens or truncation (to size a prefix)."""
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids) if text else 0

    def _features(self, batch: list[Tokenized]):
        import torch

        width = max(len(t) for t in batch)
        ids = np.full((len(batch), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        types = np.zeros((len(batch), width), dtype=np.int64)
        for row, t in enumerate(batch):
            ids[row, : len(t)] = t.ids
            mask[row, : len(t)] = 1
            types[row, : len(t)] = t.type_ids
        device = self.model.device
        features = {"input_ids": torch.from_numpy(ids).to(device), "attention_mask": torch.from_numpy(mask).to(device)}
        if self._uses_type_ids:
            features["token_type_ids"] = torch.from_numpy(types).to(device)
        return features

    def embed(self, batch: list[Tokenized]) -> np.ndarray:
        """Sentence embeddings, float32, not normalised: (len(batch), dim)."""
        import torch

        with torch.inference_mode():
            out = self.model(self._features(batch))["sentence_embedding"]
        return out.float().cpu().numpy()

    def score(self, batch: list[Tokenized]) -> np.ndarray:
        """Cross-encoder relevance after the model's activation (sigmoid for one label): (len(batch),)."""
        import torch

        with torch.inference_mode():
            logits = self.model(self._features(batch))["scores"].float()
            if self.model.activation_fn is not None:
                logits = self.model.activation_fn(logits)
        return logits.reshape(len(batch)).cpu().numpy()

    @property
    def dimension(self) -> int:
        return int(self.model.get_embedding_dimension())


def with_prefix(texts: list[str], prefix: str) -> list[str]:
    """`prefix` (a sentence-transformers prompt) before each text that does not already start with it."""
    return [t if t.startswith(prefix) else prefix + t for t in texts]


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
