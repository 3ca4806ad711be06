"""Named training recipes: the settings a sweep found, written to a file that ``neuroq train --recipe`` reads.

    {"name": "aozora-e128", "train": {"lr": 0.002, "min_lr": 0.0001, "warmup_steps": 50, "batch_size": 16, ...},
     "model": {"dropout": 0.0}, "notes": {"val_bits_per_char": 5.1, "token_budget": 4100000, ...}}

``train`` holds TrainConfig fields and ``model`` NeuroQConfig fields (dropout and the model options: rotary
positions, RMSNorm, tied embeddings, zero-initialised residual writes, the logit soft-cap); ``notes`` is provenance
(the size and budget the settings were found at, the score, the study) and changes nothing. A recipe sets training
knobs and model options, not the model's size: applied to a config, it replaces only the fields it names, and the
command line's flags still override it. JSON, or YAML by the file's suffix (.yaml / .yml).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuroq.errors import ConfigError
from neuroq.model import NeuroQConfig
from neuroq.train import TrainConfig

__all__ = ["MODEL_FIELDS", "TRAIN_FIELDS", "Recipe"]

# The knobs a recipe may carry. Size, data and run-management fields (out_dir, device, intervals, resume) are not
# training recipes: a recipe found at one size must not silently resize the model it is applied to.
TRAIN_FIELDS = ("lr", "min_lr", "warmup_steps", "max_steps", "batch_size", "grad_accum_steps", "weight_decay",
                "betas", "grad_clip", "z_loss", "seed")
MODEL_FIELDS = ("dropout", "position", "norm", "tie_embeddings", "zero_init_residual", "logit_softcap")


@dataclass
class Recipe:
    name: str
    train: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for section, allowed in (("train", TRAIN_FIELDS), ("model", MODEL_FIELDS)):
            unknown = set(getattr(self, section)) - set(allowed)
            if unknown:
                raise ConfigError(f"recipe {self.name!r}: {section} has unknown field(s) {', '.join(sorted(unknown))} "
                                  f"(a recipe may set {', '.join(allowed)})")
        # Building the configs validates every value now, not when training starts.
        self.apply(TrainConfig())

    def apply(self, config: TrainConfig) -> TrainConfig:
        """``config`` with the recipe's fields replaced; derived fields it does not name (min_lr) are derived again."""
        model = self.apply_model(config.model)
        derived = {f.name: None for f in dataclasses.fields(TrainConfig)
                   if f.default is None and f.name not in self.train and f.name != "block_size"}
        return dataclasses.replace(config, model=model, **derived, **self.train)

    def apply_model(self, model: NeuroQConfig) -> NeuroQConfig:
        return dataclasses.replace(model, **self.model)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "train": dict(self.train), "model": dict(self.model), "notes": dict(self.notes)}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.to_dict()
        if _is_yaml(path):
            import yaml

            text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
        else:
            text = json.dumps(data, ensure_ascii=False, indent=2) + "\n"
        path.write_text(text, encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe file {path} does not exist: write one with `python -m mlflow_project.sweep run "
                              "--recipe-out FILE` or by hand")
        data = _parse(path)
        if not isinstance(data, dict) or "name" not in data:
            raise ConfigError(f"recipe file {path} must hold a mapping with a 'name' (and 'train' / 'model' settings)")
        unknown = set(data) - {"name", "train", "model", "notes"}
        if unknown:
            raise ConfigError(f"recipe file {path} has unknown key(s) {', '.join(sorted(unknown))}")
        return cls(name=str(data["name"]), train=dict(data.get("train") or {}), model=dict(data.get("model") or {}),
                   notes=dict(data.get("notes") or {}))


def _parse(path: Path) -> Any:
    import yaml

    text = path.read_text(encoding="utf-8")
    try:
        return yaml.safe_load(text) if _is_yaml(path) else json.loads(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"recipe file {path} is not valid {'YAML' if _is_yaml(path) else 'JSON'}: {exc}") from None


def _is_yaml(path: Path) -> bool:
    return path.suffix.lower() in (".yaml", ".yml")
