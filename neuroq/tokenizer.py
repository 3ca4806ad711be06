"""SentencePiece BPE tokenizer with the ids NeuroQ checkpoints rely on.

Layout of every tokenizer this module trains (and of every ``.model`` file it accepts):

    0 <pad>   1 <unk>   2 <s> (bos)   3 </s> (eos)   4 <USER>   5 <ASSISTANT>   6..261 byte pieces <0x00>..<0xFF>

Byte fallback means no character is ever lost: a character the vocabulary lacks is spelled as its UTF-8 bytes.

Round-trip guarantee. With ``normalization="nfkc"`` (the default, as in the original NeuroQ) text is NFKC-normalised
before it is split, so half-width katakana become full-width, full-width ASCII becomes ASCII, "…" becomes "..." and
so on; what comes back is the normalised text:

    decode(encode(x)) == tokenizer.normalize(x)        (== unicodedata.normalize("NFKC", x))

for any string x, with one exception: U+2581 "▁" is SentencePiece's own stand-in for a space, so a literal "▁" in
the input decodes as " " (``normalize`` includes that mapping, so ``decode(encode(x)) == normalize(x)`` always).
Spaces, tabs and newlines are kept exactly (``remove_extra_whitespaces`` is off and no dummy-prefix space is added,
which would only waste a token on every Japanese text). With ``normalization="identity"`` the guarantee is
``decode(encode(x)) == x``.

One file because it is one contract: the id layout, the round-trip rule and the chat format above are what every
checkpoint relies on, and training, loading, encoding and ``format_chat`` each enforce a part of it; read together,
a change to one is seen against the others.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import tempfile
import time
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import sentencepiece as spm

from neuroq.errors import ConfigError, TokenizerError
from neuroq.validation import is_int, is_number, require

__all__ = [
    "PAD_ID",
    "UNK_ID",
    "BOS_ID",
    "EOS_ID",
    "USER_ID",
    "ASSISTANT_ID",
    "USER_TOKEN",
    "ASSISTANT_TOKEN",
    "TokenizerConfig",
    "NeuroQTokenizer",
]

log = logging.getLogger(__name__)

PAD_ID, UNK_ID, BOS_ID, EOS_ID, USER_ID, ASSISTANT_ID = 0, 1, 2, 3, 4, 5
USER_TOKEN, ASSISTANT_TOKEN = "<USER>", "<ASSISTANT>"
_RESERVED_PIECES = ("<pad>", "<unk>", "<s>", "</s>", USER_TOKEN, ASSISTANT_TOKEN)
_N_BYTE_PIECES = 256

# SentencePiece silently drops training sentences longer than this many bytes, so long documents are cut into
# chunks below it (at line ends where possible) instead of vanishing from the tokenizer's statistics.
_MAX_SENTENCE_BYTES = 4192

ChatTurns = Sequence[tuple[str, str | None]] | Sequence[Mapping[str, str]]


def _default_num_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 16))


@dataclass
class TokenizerConfig:
    """How to train a tokenizer. Defaults are the original NeuroQ's (BPE, 8000 pieces, coverage 0.9995, NFKC) plus
    byte fallback, which the original lacked: there, characters outside the vocabulary vanished on decode.

    vocab_size: total pieces, the 262 reserved and byte pieces included.
    character_coverage: share of the corpus's characters that get a piece of their own; the rarest characters
        beyond it are spelled in bytes.
    input_sentence_size: at most this many training sentences (lines or chunks) are sampled; 0 uses all of them.
    hard_vocab_limit: if True, a corpus too small for ``vocab_size`` is an error that states the largest size it
        supports; if False the tokenizer comes out smaller and ``NeuroQTokenizer.vocab_size`` reports the real size.
    split_digits: numbers become one piece per digit, so a small model does not memorise a piece per number.
    """

    vocab_size: int = 8000
    character_coverage: float = 0.9995
    model_type: Literal["bpe", "unigram"] = "bpe"
    byte_fallback: bool = True
    normalization: Literal["nfkc", "identity"] = "nfkc"
    input_sentence_size: int = 2_000_000
    seed: int = 0
    num_threads: int = field(default_factory=_default_num_threads)
    split_digits: bool = True
    hard_vocab_limit: bool = True

    def __post_init__(self) -> None:
        min_vocab = len(_RESERVED_PIECES) + (_N_BYTE_PIECES if self.byte_fallback is True else 0) + 1
        require(is_int(self.vocab_size) and self.vocab_size >= min_vocab, "TokenizerConfig.vocab_size",
                f"an integer >= {min_vocab} (the reserved and byte pieces plus at least one more)", self.vocab_size)
        require(is_number(self.character_coverage) and 0.0 < self.character_coverage <= 1.0,
                "TokenizerConfig.character_coverage", "a number in (0, 1]", self.character_coverage)
        require(self.model_type in ("bpe", "unigram"), "TokenizerConfig.model_type", "'bpe' or 'unigram'",
                self.model_type)
        require(self.normalization in ("nfkc", "identity"), "TokenizerConfig.normalization", "'nfkc' or 'identity'",
                self.normalization)
        require(is_int(self.input_sentence_size) and self.input_sentence_size >= 0,
                "TokenizerConfig.input_sentence_size", "an integer >= 0 (0 = all sentences)", self.input_sentence_size)
        require(is_int(self.seed), "TokenizerConfig.seed", "an integer", self.seed)
        require(is_int(self.num_threads) and self.num_threads >= 1, "TokenizerConfig.num_threads", "an integer >= 1",
                self.num_threads)
        for name in ("byte_fallback", "split_digits", "hard_vocab_limit"):
            value = getattr(self, name)
            require(isinstance(value, bool), f"TokenizerConfig.{name}", "a bool", value)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class NeuroQTokenizer:
    """A trained SentencePiece model plus the NeuroQ conventions (reserved ids, chat format, round-trip rule)."""

    def __init__(self, model_proto: bytes) -> None:
        """Wrap a serialized SentencePiece model; prefer ``train``, ``load`` or ``from_bytes``."""
        self._proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.load_from_serialized_proto(self._proto)
        except (RuntimeError, OSError) as exc:
            raise TokenizerError(f"not a SentencePiece model ({len(self._proto)} bytes): {exc}") from exc
        self._check_layout()
        self._normalization = self._read_normalization()
        self._num_threads = _default_num_threads()

    # ---- construction -------------------------------------------------------------------------------------

    @classmethod
    def train(cls, texts: Iterable[str], config: TokenizerConfig | None = None) -> NeuroQTokenizer:
        """Train on ``texts``, an iterable of documents read once (a list, a generator).

        To train on files, pass ``neuroq.data.read_texts(paths)``. A bare ``str`` or path is refused rather than
        read as one character per document. Nothing is written to disk; save the result with ``save``.
        """
        if isinstance(texts, str | os.PathLike):
            raise TokenizerError(f"training texts must be an iterable of str, got the single {type(texts).__name__} "
                                 f"{str(texts)[:60]!r}: pass [text], or neuroq.data.read_texts(paths) for files")
        config = config or TokenizerConfig()
        failure: list[BaseException] = []
        model = io.BytesIO()
        spm.set_random_generator_seed(config.seed)
        started = time.perf_counter()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=_training_sentences(texts, failure),
                model_writer=model,
                model_type=config.model_type,
                vocab_size=config.vocab_size,
                character_coverage=config.character_coverage,
                byte_fallback=config.byte_fallback,
                normalization_rule_name=config.normalization,
                remove_extra_whitespaces=False,
                add_dummy_prefix=False,
                split_digits=config.split_digits,
                hard_vocab_limit=config.hard_vocab_limit,
                input_sentence_size=config.input_sentence_size,
                shuffle_input_sentence=True,
                max_sentence_length=_MAX_SENTENCE_BYTES,
                # A space is stored as "▁"; if the corpus had no spaces, "▁" would be spelled in bytes, and
                # SentencePiece decodes byte-spelled "▁" as itself, not as a space: keep it in the vocabulary.
                required_chars="▁",
                num_threads=config.num_threads,
                pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
                pad_piece="<pad>", unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
                user_defined_symbols=[USER_TOKEN, ASSISTANT_TOKEN],
                minloglevel=2,
            )
        except RuntimeError as exc:
            # The C++ trainer turns an exception raised by our reader into a RuntimeError with only its text;
            # re-raise the original so a bad input file keeps its own error type and message.
            if failure:
                raise failure[0] from None
            raise _explain_training_error(exc, config) from None
        if failure:
            raise failure[0]
        tokenizer = cls(model.getvalue())
        log.info("trained a %s tokenizer: %d pieces in %.2f s", config.model_type, tokenizer.vocab_size,
                 time.perf_counter() - started)
        if tokenizer.vocab_size < config.vocab_size:
            log.warning("the corpus supports only %d of the %d requested pieces (hard_vocab_limit=False)",
                        tokenizer.vocab_size, config.vocab_size)
        return tokenizer

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> NeuroQTokenizer:
        """Load a ``.model`` file written by ``save`` (or any SentencePiece model with the NeuroQ id layout)."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise TokenizerError(f"tokenizer file {path} does not exist") from None
        except OSError as exc:
            raise TokenizerError(f"cannot read tokenizer file {path}: {exc}") from exc
        if data.startswith(b"version https://git-lfs"):
            raise TokenizerError(f"tokenizer file {path} is a Git LFS pointer ({len(data)} bytes), not a model: "
                                 "run `git lfs pull` or load it from the registry")
        try:
            return cls(data)
        except TokenizerError as exc:
            raise TokenizerError(f"tokenizer file {path}: {exc}") from None

    @classmethod
    def from_bytes(cls, data: bytes) -> NeuroQTokenizer:
        return cls(data)

    def to_bytes(self) -> bytes:
        """The serialized model proto: exactly the bytes ``save`` writes."""
        return self._proto

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the ``.model`` file atomically, so a crash never leaves a half-written tokenizer behind."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(self._proto)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    # ---- vocabulary -----------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def sha256(self) -> str:
        """Fingerprint of the model file; token shards record it so data and tokenizer cannot be mixed up."""
        return hashlib.sha256(self._proto).hexdigest()

    @property
    def normalization(self) -> str:
        return self._normalization

    def id_to_piece(self, id: int) -> str:
        self._check_id(id)
        return self._sp.id_to_piece(id)

    def piece_to_id(self, piece: str) -> int:
        """The id of ``piece``, or UNK_ID when the vocabulary lacks it."""
        return self._sp.piece_to_id(piece)

    def is_byte(self, id: int) -> bool:
        """True for the byte-fallback pieces <0x00>..<0xFF>, i.e. characters the vocabulary had to spell out."""
        self._check_id(id)
        return self._sp.is_byte(id)

    # ---- text <-> ids ---------------------------------------------------------------------------------------

    def normalize(self, text: str) -> str:
        """The text as ``encode`` sees it: ``decode(encode(text)) == normalize(text)`` for every string.

        SentencePiece's own normaliser (NFKC, or nothing) followed by the decoder's "▁" -> " " mapping, so the
        equality holds by construction; it agrees with ``unicodedata.normalize("NFKC", text)`` except for U+2581.
        """
        return self._sp.normalize(text).replace("▁", " ")

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        return self._sp.encode(text, out_type=int, add_bos=add_bos, add_eos=add_eos)

    def encode_batch(self, texts: Sequence[str], add_bos: bool = False, add_eos: bool = False) -> list[list[int]]:
        """Encode many texts at once on several threads (SentencePiece releases the GIL)."""
        return self._sp.encode(list(texts), out_type=int, add_bos=add_bos, add_eos=add_eos,
                               num_threads=self._num_threads)

    def decode(self, ids: Iterable[int], keep_special: bool = False) -> str:
        """Text of ``ids``. pad/bos/eos never appear in it; <USER>/<ASSISTANT> only with ``keep_special=True``.

        Accepts any iterable of ints (a list, a numpy array, a 1-D tensor).
        """
        dropped = (PAD_ID, BOS_ID, EOS_ID) if keep_special else (PAD_ID, BOS_ID, EOS_ID, USER_ID, ASSISTANT_ID)
        kept = [int(i) for i in ids]
        for i in kept:
            self._check_id(i)
        return self._sp.decode([i for i in kept if i not in dropped])

    def decode_batch(self, batch: Iterable[Iterable[int]], keep_special: bool = False) -> list[str]:
        return [self.decode(ids, keep_special=keep_special) for ids in batch]

    # ---- chat format ------------------------------------------------------------------------------------------

    @staticmethod
    def format_chat(turns: ChatTurns, system: str | None = None) -> str:
        """Render a conversation as NeuroQ sees it: ``<USER>{user}<ASSISTANT>{assistant}`` per turn.

        ``turns`` is a list of ``(user, assistant)`` pairs, where the last pair's assistant may be None or "" (an
        open turn), or a list of ``{"role": "user"|"assistant"|"system", "content": ...}`` messages. System text
        (the ``system`` argument, then any system messages, one per line) becomes a prefix of the first user turn,
        since NeuroQ has no system role. An open last turn (ending with a user message) ends with "<ASSISTANT>",
        the prompt from which the model generates the answer.

        Role markers inside a message are removed, so text a user types cannot forge a turn. A message that holds
        one (also in a disguise such as "＜USER＞", which NFKC would turn into a real marker when encoded) is
        NFKC-normalised before the markers are removed; other messages are left exactly as given.
        """
        messages = [{"role": m["role"], "content": _strip_markers(m["content"])} for m in _as_messages(turns)]
        prefix = "\n".join(_strip_markers(part) for part in
                           ([system] if system else []) + [m["content"] for m in messages if m["role"] == "system"]
                           if part)
        messages = [m for m in messages if m["role"] != "system"]
        if prefix:
            first_user = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
            if first_user is None:
                messages.insert(0, {"role": "user", "content": prefix})
            else:
                messages[first_user] = {"role": "user", "content": f"{prefix}\n{messages[first_user]['content']}"}
        out = [(USER_TOKEN if m["role"] == "user" else ASSISTANT_TOKEN) + m["content"] for m in messages]
        if messages and messages[-1]["role"] == "user":
            out.append(ASSISTANT_TOKEN)
        return "".join(out)

    # ---- internals --------------------------------------------------------------------------------------------

    def _check_id(self, id: int) -> None:
        if not 0 <= id < self.vocab_size:
            raise TokenizerError(f"token id {id} is outside this tokenizer's vocabulary (0..{self.vocab_size - 1})")

    def _check_layout(self) -> None:
        sp = self._sp
        ids = (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id())
        pieces = tuple(sp.id_to_piece(i) for i in range(min(len(_RESERVED_PIECES), sp.get_piece_size())))
        if ids != (PAD_ID, UNK_ID, BOS_ID, EOS_ID) or pieces != _RESERVED_PIECES:
            raise TokenizerError(
                "model does not have the NeuroQ reserved ids (pad 0 <pad>, unk 1 <unk>, bos 2 <s>, eos 3 </s>, "
                f"4 {USER_TOKEN}, 5 {ASSISTANT_TOKEN}); found special ids {ids} and pieces {pieces}")

    def _read_normalization(self) -> str:
        # Probed by behaviour rather than read from the proto (that would need protobuf): this checks exactly
        # what the round-trip guarantee depends on. nmt_nfkc would turn the tab into a space, nfkc_cf would
        # lower-case "A", remove_extra_whitespaces would merge the two spaces, add_dummy_prefix would add a "▁".
        probe = self._sp.normalize("ｱ\tA  x")
        for name, expected in (("nfkc", "ア\tA▁▁x"), ("identity", "ｱ\tA▁▁x")):
            if probe == expected:
                return name
        raise TokenizerError(
            f"model normalises 'ｱ\\tA  x' to {probe!r}: NeuroQ needs NFKC or identity normalisation without "
            "whitespace cleaning or a dummy prefix, so that text round-trips")

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        # SentencePieceProcessor itself cannot be pickled; DataLoader workers and MLflow need this object to be.
        return (NeuroQTokenizer.from_bytes, (self._proto,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NeuroQTokenizer) and other._proto == self._proto

    def __hash__(self) -> int:
        return hash(self._proto)

    def __repr__(self) -> str:
        return f"NeuroQTokenizer(vocab_size={self.vocab_size}, normalization={self._normalization!r}, " \
               f"sha256={self.sha256[:12]})"


def _training_sentences(texts: Iterable[str], failure: list[BaseException]) -> Iterator[str]:
    """Yield each text as chunks of whole lines below SentencePiece's sentence limit, keeping the newlines.

    Newlines stay inside the chunks so that "\n" is learned as an ordinary character (merging into pieces such
    as "。\n") instead of always costing a byte piece. An exception from ``texts`` is parked in ``failure``
    because the C++ trainer would otherwise swallow its type.
    """
    try:
        for text in texts:
            if not isinstance(text, str):
                raise TokenizerError(f"training texts must be str, got {type(text).__name__}")
            yield from _chunks(text)
    except Exception as exc:  # noqa: BLE001 - re-raised by NeuroQTokenizer.train
        failure.append(exc)


def _chunks(text: str) -> Iterator[str]:
    limit = _MAX_SENTENCE_BYTES // 4  # characters; UTF-8 needs at most 4 bytes per character
    chunk: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        while len(line) > limit:
            yield line[:limit]
            line = line[limit:]
        if size + len(line) > limit and chunk:
            yield "".join(chunk)
            chunk, size = [], 0
        chunk.append(line)
        size += len(line)
    if chunk:
        yield "".join(chunk)


def _explain_training_error(exc: RuntimeError, config: TokenizerConfig) -> TokenizerError:
    message = str(exc)
    too_high = re.search(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)", message)
    if too_high:
        return TokenizerError(
            f"vocab_size={config.vocab_size} is more than this corpus supports: at most {too_high.group(2)} pieces. "
            "Use a smaller vocab_size, more text, or hard_vocab_limit=False to accept the smaller vocabulary")
    too_small = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", message)
    if too_small:
        return TokenizerError(
            f"vocab_size={config.vocab_size} is too small for this corpus: its characters at character_coverage="
            f"{config.character_coverage} need {too_small.group(2)} pieces with the reserved and byte pieces. "
            "Raise vocab_size or lower character_coverage (rarer characters are then spelled in bytes)")
    if "!sentences_.empty()" in message:
        return TokenizerError("the training corpus is empty: no non-blank text to learn from")
    return TokenizerError(f"SentencePiece training failed: {message}")


def _as_messages(turns: ChatTurns) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = []
    items = list(turns)
    for n, turn in enumerate(items):
        if isinstance(turn, Mapping):
            role, content = turn.get("role"), turn.get("content")
            if role not in ("user", "assistant", "system"):
                raise ConfigError(f"chat message {n} has role {role!r}; expected 'user', 'assistant' or 'system'")
            if not isinstance(content, str):
                raise ConfigError(f"chat message {n} ({role}) content must be a str, got {type(content).__name__}")
            messages.append({"role": role, "content": content})
        elif isinstance(turn, tuple | list) and len(turn) == 2:
            user, assistant = turn
            if not isinstance(user, str) or not isinstance(assistant, str | None):
                raise ConfigError(f"chat turn {n} must hold str texts (the last answer may be None), got {turn!r}")
            messages.append({"role": "user", "content": user})
            if assistant:
                messages.append({"role": "assistant", "content": assistant})
            elif n != len(items) - 1:
                raise ConfigError(f"chat turn {n} has no assistant answer; only the last turn may be open")
        else:
            raise ConfigError(f"chat turn {n} must be a (user, assistant) pair or a {{role, content}} dict, "
                              f"got {turn!r}")
    return messages


def _strip_markers(text: str) -> str:
    normalized = unicodedata.normalize("NFKC", text)
    if USER_TOKEN not in normalized and ASSISTANT_TOKEN not in normalized:
        return text
    return normalized.replace(USER_TOKEN, "").replace(ASSISTANT_TOKEN, "")
