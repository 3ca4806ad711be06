"""Atomic save and safe load of NeuroQ checkpoints.

A checkpoint is a directory::

    model.safetensors    weights (tied tensors stored once)
    config.json          {"format": "neuroq-checkpoint", "version": 1, "model": NeuroQConfig.to_dict(),
                          "tokenizer": {"sha256", "vocab_size"}, "files": {name: {"sha256", "size"}}, "extra": {...}}
    tokenizer.model      the SentencePiece model the weights were trained with
    training_state.pt    (training checkpoints only) optimizer state, step, RNG states; tensors and plain
                         containers only, so it loads with ``torch.load(weights_only=True)``

Writes go to a temporary sibling directory that is swapped in with a rename, so a reader sees either the
previous checkpoint or the new one, never a mix, and a crash mid-write leaves the previous one intact. Loads
check every failure a user actually meets (a Git LFS pointer instead of the file, an interrupted copy, a
checkpoint of another architecture) and say which file is wrong and what to do.

One file because saving and loading are the two halves of one on-disk format: the file names, the recorded sizes
and digests, and the atomic swap that ``recover_interrupted_save`` undoes must agree, and they are checked by
reading both halves side by side.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import hashlib
import io
import json
import logging
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from neuroq.errors import CheckpointError, ConfigError, TokenizerError

if TYPE_CHECKING:
    from neuroq.model import NeuroQ, NeuroQConfig
    from neuroq.tokenizer import NeuroQTokenizer

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CONFIG_FILE",
    "TOKENIZER_FILE",
    "TRAINING_STATE_FILE",
    "WEIGHTS_FILE",
    "LoadedCheckpoint",
    "is_lfs_pointer",
    "load_checkpoint",
    "read_checkpoint_config",
    "recover_interrupted_save",
    "save_checkpoint",
    "unwrap_model",
    "verify_checkpoint",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "neuroq-checkpoint"
CHECKPOINT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.model"
TRAINING_STATE_FILE = "training_state.pt"

_LFS_MAGIC = b"version https://git-lfs.github.com/spec/v1"
# Real pointer files are ~130 bytes; anything this large is a real file whatever it starts with.
_LFS_POINTER_MAX_BYTES = 1024


@dataclass
class LoadedCheckpoint:
    """What :func:`load_checkpoint` returns; ``model`` is on the requested device in eval mode."""

    model: NeuroQ
    tokenizer: NeuroQTokenizer
    config: NeuroQConfig
    training_state: dict[str, Any] | None
    extra: dict[str, Any]
    path: Path
    metadata: dict[str, Any] = field(repr=False, default_factory=dict)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


# ---------------------------------------------------------------------------------------------------- saving


def save_checkpoint(
    path: str | os.PathLike[str],
    model: torch.nn.Module,
    tokenizer: NeuroQTokenizer,
    *,
    training_state: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory at ``path`` atomically and return its path.

    ``model`` may be wrapped in DDP or ``torch.compile``. ``training_state`` must hold only tensors, numbers,
    strings, None and lists/tuples/dicts of them (it is loaded back with ``weights_only=True``); ``extra`` must
    be JSON-serialisable (metrics, the training config, ...). An existing checkpoint at ``path`` is replaced
    only once the new one is complete on disk.
    """
    path = Path(path)
    raw = unwrap_model(model)
    model_config = raw.config
    tensors = _dedupe_shared(raw.state_dict())
    weights = safetensors_save(tensors, metadata={"format": CHECKPOINT_FORMAT})
    tok_bytes = tokenizer.to_bytes()
    files: dict[str, bytes] = {WEIGHTS_FILE: weights, TOKENIZER_FILE: tok_bytes}
    if training_state is not None:
        buf = io.BytesIO()
        torch.save(dict(training_state), buf)
        files[TRAINING_STATE_FILE] = buf.getvalue()
    config = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": model_config.to_dict(),
        "tokenizer": {"sha256": hashlib.sha256(tok_bytes).hexdigest(), "vocab_size": tokenizer.vocab_size},
        "files": {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)} for name, data in files.items()},
        "extra": dict(extra or {}),
    }
    # Serialise before touching the disk so a non-JSON `extra` fails without leaving anything behind.
    files[CONFIG_FILE] = (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode("utf-8")

    path.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted_save(path)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        for name, data in files.items():
            _write_bytes(tmp / name, data)
        _fsync_dir(tmp)
        _swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.debug("saved checkpoint %s (%d bytes of weights)", path, len(weights))
    return path


def _dedupe_shared(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep one name per storage: safetensors refuses aliased tensors (tied embedding and LM head).

    The dropped names are restored on load from the model's own aliasing, so nothing extra is recorded.
    """
    seen: set[tuple[int, int, tuple[int, ...], tuple[int, ...]]] = set()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()))
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        out[name] = tensor.detach().to("cpu").contiguous()
    return out


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    # Directory fsync makes the new entries (and renames) durable; not supported on every platform.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def recover_interrupted_save(path: str | os.PathLike[str]) -> None:
    """Undo what a writer killed mid-save left beside ``path`` (one writer per path is assumed).

    A kill while files are written leaves a partial ``.NAME.tmp-*``: it is deleted, ``path`` was never touched.
    Without an atomic exchange, a kill between the two renames leaves no ``path`` but the previous checkpoint,
    complete, under ``.NAME.old-*``: it is renamed back, so the save counts as never having happened.
    """
    path = Path(path)
    if not path.exists():
        previous = sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime)
        if previous:
            logger.warning("restoring %s from %s, left by a save interrupted between its renames", path,
                           previous[-1])
            os.rename(previous[-1], path)
            _fsync_dir(path.parent)
    for prefix in (f".{path.name}.tmp-", f".{path.name}.old-"):
        for stale in path.parent.glob(prefix + "*"):
            logger.info("removing %s left by an interrupted checkpoint write", stale)
            shutil.rmtree(stale, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@functools.cache
def _renameat2() -> Any:
    libc_name = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(libc_name, use_errno=True), "renameat2", None) if libc_name else None


def _rename_exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directory entries (Linux renameat2); False when the platform or filesystem can't."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_into_place(tmp: Path, path: Path) -> None:
    if not path.exists():
        os.rename(tmp, path)
    elif _rename_exchange(tmp, path):
        # `tmp` now holds the previous checkpoint.
        shutil.rmtree(tmp)
    else:
        # Two renames: a reader may briefly find no `path`, but never a partial one, and a crash between them
        # leaves the previous checkpoint complete under `.NAME.old-*`.
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:12]}"
        os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old)
    _fsync_dir(path.parent)


# ---------------------------------------------------------------------------------------------------- loading


def is_lfs_pointer(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a Git LFS pointer file (the repository was cloned without ``git lfs pull``)."""
    try:
        if os.path.getsize(path) > _LFS_POINTER_MAX_BYTES:
            return False
        with open(path, "rb") as f:
            return f.read(len(_LFS_MAGIC)) == _LFS_MAGIC
    except OSError:
        return False


def _lfs_error(file: Path) -> CheckpointError:
    size = file.stat().st_size
    text = file.read_text("utf-8", errors="replace")
    target = next((line.split()[1] for line in text.splitlines() if line.startswith("size ") and len(line.split()) == 2), None)
    points_to = f", standing for a {int(target):,}-byte file" if target and target.isdigit() else ""
    return CheckpointError(
        f"checkpoint file {file} is a Git LFS pointer ({size} bytes{points_to}), not a model: "
        "run `git lfs pull` in that repository or load the model from the registry"
    )


def read_checkpoint_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse and check ``config.json`` of a checkpoint directory without loading weights."""
    root = _checkpoint_dir(Path(path))
    file = root / CONFIG_FILE
    if not file.is_file():
        raise CheckpointError(f"{root} is not a NeuroQ checkpoint: {CONFIG_FILE} is missing")
    if is_lfs_pointer(file):
        raise _lfs_error(file)
    try:
        config = json.loads(file.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{file} is truncated or corrupt: not valid JSON ({exc})") from exc
    if not isinstance(config, dict) or config.get("format") != CHECKPOINT_FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise CheckpointError(
            f"{file} is not a NeuroQ checkpoint config (format {found!r}, expected {CHECKPOINT_FORMAT!r}); "
            "a checkpoint of another architecture or library cannot be loaded as NeuroQ"
        )
    version = config.get("version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{file} has checkpoint format version {version!r}; this neuroq reads up to version "
            f"{CHECKPOINT_VERSION}: upgrade neuroq"
        )
    if not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{file} has no 'model' section describing the architecture")
    return config


def verify_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check that every file ``config.json`` records is present with its recorded size and sha256; return the config.

    Cheaper than :func:`load_checkpoint` (no model is built), for saying "the weights are intact" after a failure.
    """
    root = _checkpoint_dir(Path(path))
    config = read_checkpoint_config(root)
    files = config.get("files")
    if not isinstance(files, dict) or WEIGHTS_FILE not in files:
        raise CheckpointError(f"{root / CONFIG_FILE} records no file hashes, so the checkpoint cannot be verified")
    for name in files:
        _read_verified(root, name, config)
    return config


def _checkpoint_dir(path: Path) -> Path:
    if path.is_dir():
        return path
    if path.is_file():
        if is_lfs_pointer(path):
            raise _lfs_error(path)
        if path.name in (WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE, TRAINING_STATE_FILE):
            raise CheckpointError(f"{path} is one file of a checkpoint: pass its directory {path.parent}")
        raise CheckpointError(f"{path} is a file, not a NeuroQ checkpoint directory")
    leftover = sorted(path.parent.glob(f".{path.name}.old-*"))
    if leftover:
        raise CheckpointError(f"checkpoint {path} does not exist, but an interrupted save left the previous one at "
                              f"{leftover[-1]}: rename that directory to {path.name} (resuming training does it itself)")
    raise CheckpointError(f"checkpoint {path} does not exist")


def _read_verified(root: Path, name: str, config: Mapping[str, Any], *, verify_digest: bool = True) -> bytes:
    """Read one checkpoint file, refusing LFS pointers and files that differ from what config.json recorded
    (in size always; in sha256 unless ``verify_digest`` is false)."""
    file = root / name
    if not file.is_file():
        raise CheckpointError(f"checkpoint {root} is incomplete: {name} is missing")
    if is_lfs_pointer(file):
        raise _lfs_error(file)
    data = file.read_bytes()
    recorded = config.get("files", {}).get(name)
    if isinstance(recorded, dict):
        size = recorded.get("size")
        if isinstance(size, int) and len(data) != size:
            raise CheckpointError(
                f"{file} is truncated or corrupt: {len(data):,} bytes, but the checkpoint recorded {size:,} "
                "(an interrupted copy or download?)"
            )
        digest = recorded.get("sha256")
        if verify_digest and isinstance(digest, str) and hashlib.sha256(data).hexdigest() != digest:
            raise CheckpointError(
                f"{file} is corrupt: its sha256 differs from the one recorded in {CONFIG_FILE} "
                "(modified after saving, or copied from another checkpoint)"
            )
    return data


def load_checkpoint(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    with_training_state: bool = False,
    verify_digests: bool = True,
) -> LoadedCheckpoint:
    """Load a checkpoint directory written by :func:`save_checkpoint`.

    Raises :class:`CheckpointError` naming the file when a file is missing, a Git LFS pointer, truncated or
    corrupt, or when the weights do not match the architecture in ``config.json``. With
    ``with_training_state`` the optimizer/step/RNG state is loaded too (an export without it is refused).
    ``verify_digests=False`` skips only the sha256 comparison, for a caller that has just hashed these same
    files against digests of its own (a served model's artifacts); sizes and LFS pointers are still refused.
    """
    from neuroq.model import NeuroQ, NeuroQConfig
    from neuroq.tokenizer import NeuroQTokenizer

    root = _checkpoint_dir(Path(path))
    meta = read_checkpoint_config(root)
    try:
        model_config = NeuroQConfig.from_saved(meta["model"])
    except (ConfigError, TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"{root / CONFIG_FILE} describes a model this neuroq cannot build (another architecture or a newer "
            f"version?): {exc}"
        ) from exc

    tok_bytes = _read_verified(root, TOKENIZER_FILE, meta, verify_digest=verify_digests)
    try:
        tokenizer = NeuroQTokenizer.from_bytes(tok_bytes)
    except (TokenizerError, RuntimeError, OSError, ValueError) as exc:
        raise CheckpointError(f"{root / TOKENIZER_FILE} is truncated or corrupt: {exc}") from exc
    if tokenizer.vocab_size > model_config.vocab_size:
        raise CheckpointError(
            f"{root / TOKENIZER_FILE} has {tokenizer.vocab_size} pieces but the model in {CONFIG_FILE} has "
            f"vocab_size {model_config.vocab_size}: tokenizer and weights come from different checkpoints"
        )

    weights = _read_verified(root, WEIGHTS_FILE, meta, verify_digest=verify_digests)
    try:
        tensors = safetensors_load(weights)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{root / WEIGHTS_FILE} is truncated or corrupt: {exc}") from exc

    model = NeuroQ(model_config)
    _load_weights(model, tensors, root)
    model.to(device)
    model.eval()

    training_state = None
    if with_training_state:
        if not (root / TRAINING_STATE_FILE).exists():
            raise CheckpointError(
                f"{root} has no {TRAINING_STATE_FILE}: it is an exported model, not a training checkpoint, "
                "so training cannot resume from it"
            )
        state_bytes = _read_verified(root, TRAINING_STATE_FILE, meta, verify_digest=verify_digests)
        try:
            training_state = torch.load(io.BytesIO(state_bytes), map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several unrelated types for a damaged or unsafe pickle
            raise CheckpointError(f"{root / TRAINING_STATE_FILE} is truncated, corrupt or unsafe: {exc}") from exc

    return LoadedCheckpoint(
        model=model,
        tokenizer=tokenizer,
        config=model_config,
        training_state=training_state,
        extra=dict(meta.get("extra") or {}),
        path=root,
        metadata=meta,
    )


def _load_weights(model: NeuroQ, tensors: dict[str, torch.Tensor], root: Path) -> None:
    expected = model.state_dict()
    # Names the saver dropped because they alias another tensor (tied weights) come back from their twin.
    groups: dict[tuple[int, int], list[str]] = {}
    for name, tensor in expected.items():
        if tensor.numel():
            groups.setdefault((tensor.untyped_storage().data_ptr(), tensor.storage_offset()), []).append(name)
    for names in groups.values():
        present = [n for n in names if n in tensors]
        if present:
            for n in names:
                tensors.setdefault(n, tensors[present[0]])

    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = [
        f"{n} {tuple(tensors[n].shape)} vs {tuple(t.shape)}"
        for n, t in expected.items()
        if n in tensors and tuple(tensors[n].shape) != tuple(t.shape)
    ]
    if missing or unexpected or mismatched:
        cfg = model.config
        parts = []
        if missing:
            parts.append(f"missing {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected {_preview(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatch (file vs config) {_preview(mismatched)}")
        raise CheckpointError(
            f"{root / WEIGHTS_FILE} holds weights of another architecture than {CONFIG_FILE} describes "
            f"(mode={cfg.mode!r}, n_embd={cfg.n_embd}, n_layer={cfg.n_layer}, vocab_size={cfg.vocab_size}): "
            + "; ".join(parts)
        )
    model.load_state_dict(tensors, strict=True)


def _preview(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)})"
