"""What the project's command lines share: flags built from config dataclasses, and one way to report errors.

Every knob is a field of a library config (TokenizerConfig, NeuroQConfig, TrainConfig, GenerationConfig, ...):
``ConfigArgs`` turns those fields into flags (``n_embd`` -> ``--n-embd``), so a knob is defined once. Every
command line (``python -m neuroq``, ``python -m neuroq.ingest``, ``python -m pipelines.run``, the MLproject entry
points) runs its work through ``run_command``, which turns a ``NeuroQError`` into one line on stderr and an exit
status instead of a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, Literal, NoReturn

from neuroq.errors import ConfigError, NeuroQError

__all__ = ["ConfigArgs", "flagify", "run_command"]

_MISSING = dataclasses.MISSING


def run_command(command: Callable[[], object], *, prog: str | None = None, status: int = 2,
                usage_error: Callable[[str], NoReturn] | None = None) -> int:
    """Call ``command`` and return the exit status: 0, or ``status`` after a ``NeuroQError``.

    The error is printed as ``{prog}: error: {message}`` (``error: {message}`` without ``prog``) on stderr, with
    no traceback: the library's errors already say what failed and what to do. With ``usage_error`` (an
    ``ArgumentParser.error``), a ``ConfigError`` is a usage error instead: its message goes there, which prints
    the usage line and exits with status 2.
    """
    try:
        command()
    except ConfigError as error:
        if usage_error is None:
            return _report(error, prog, status)
        usage_error(str(error))
    except NeuroQError as error:
        return _report(error, prog, status)
    return 0


def _report(error: NeuroQError, prog: str | None, status: int) -> int:
    print(f"{prog}: error: {error}" if prog else f"error: {error}", file=sys.stderr)
    return status


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else tp), True
    return tp, False


def _optional(convert: Any) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() == "none" else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def _default_text(f: dataclasses.Field[Any]) -> str:
    if f.default is not _MISSING:
        return repr(f.default)
    if f.default_factory is not _MISSING:  # type: ignore[misc]
        return repr(f.default_factory())  # type: ignore[misc]
    return "required"


class ConfigArgs:
    """The flags a dataclass contributes to a parser, and how to read them back into an instance."""

    def __init__(self, parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, *,
                 skip: Sequence[str] = (), aliases: dict[str, Sequence[str]] | None = None,
                 defaults: Any = None) -> None:
        self.cls = cls
        self.names: list[str] = []
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in skip or not f.init:
                continue
            flags = [_flag(f.name), *(aliases or {}).get(f.name, ())]
            tp, optional = _unwrap_optional(hints[f.name])
            # A None class default is resolved in __post_init__ (block_size -> max_seq_len): show it unresolved.
            derived = f.default is None
            default = repr(getattr(defaults, f.name)) if defaults is not None and not derived else _default_text(f)
            kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS,
                                      "help": f"default {default}" + (" (none = unset)" if optional else "")}
            origin = typing.get_origin(tp)
            if tp is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            elif origin is Literal:
                kwargs["choices"] = list(typing.get_args(tp))
            elif origin is tuple:
                item_types = typing.get_args(tp)
                if len(item_types) == 2 and item_types[1] is Ellipsis:  # tuple[str, ...]: a repeatable flag
                    kwargs.update(action="append", type=item_types[0])
                    kwargs["help"] += " (repeatable)"
                else:
                    kwargs.update(nargs=len(item_types), type=item_types[0])
            elif tp in (int, float, str):
                kwargs["type"] = _optional(tp) if optional else tp
            else:
                continue  # nested configs get their own flags
            parser.add_argument(*flags, **kwargs)
            self.names.append(f.name)

    def overrides(self, ns: argparse.Namespace) -> dict[str, Any]:
        return {n: getattr(ns, n) for n in self.names if hasattr(ns, n)}

    def build(self, ns: argparse.Namespace, base: Any = None, **fixed: Any) -> Any:
        values = {**self.overrides(ns), **fixed}
        return dataclasses.replace(base, **values) if base is not None else self.cls(**values)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def flagify(message: str, names: Sequence[str]) -> str:
    """Rewrite config field names in an error message as the CLI flags that set them.

    ``TrainConfig.batch_size`` anywhere, a name with an underscore anywhere, and a bare name that opens the
    message (the library's "field must be ..." convention) are replaced; other words are left alone.
    """
    for name in sorted(set(names), key=len, reverse=True):
        message = re.sub(rf"\b\w*Config\.(?:\w+\.)*{name}\b", _flag(name), message)
        if "_" in name:
            message = re.sub(rf"(?<![\w-]){name}\b", _flag(name), message)
        elif message.startswith(name + " "):
            message = _flag(name) + message[len(name):]
    return message
