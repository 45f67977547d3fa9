"""Name -> implementation registries, so a YAML `method:` or `job:` picks code by name.

Each kind ("job", "peft", "unlearning_loss", ...) is its own namespace. Modules register
on import; `lookup` imports the modules a kind lists in `_PROVIDERS` first, so a name
resolves without the caller knowing where it is defined.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable, TypeVar

from lathe.platform.errors import ConfigError

T = TypeVar("T")

_REGISTRY: dict[str, dict[str, Any]] = {}

# Modules whose import registers the implementations of a kind. Extended by each layer.
_PROVIDERS: dict[str, list[str]] = {
    "job": [
        "lathe.jobs.sft",
        "lathe.jobs.unlearn",
        "lathe.jobs.edit",
        "lathe.jobs.retrieval",
        "lathe.jobs.dpo",
        "lathe.jobs.reward_model",
        "lathe.jobs.macpo",
    ],
    "peft": ["lathe.methods.peft", "lathe.methods.meft"],
    "unlearning_loss": ["lathe.methods.unlearning"],
    "sft_data": ["lathe.methods.lego.finetune", "lathe.methods.agents.distill"],
}


def register(kind: str, name: str) -> Callable[[T], T]:
    """Decorator: `@register("job", "sft")`. Registering a name twice is a bug."""

    def deco(obj: T) -> T:
        table = _REGISTRY.setdefault(kind, {})
        if name in table and table[name] is not obj:
            raise ValueError(f"{kind} {name!r} is registered twice")
        table[name] = obj
        return obj

    return deco


def add_provider(kind: str, module: str) -> None:
    _PROVIDERS.setdefault(kind, [])
    if module not in _PROVIDERS[kind]:
        _PROVIDERS[kind].append(module)


def _load_providers(kind: str, until: str | None = None) -> None:
    """Import the kind's provider modules in order, stopping once `until` is registered."""
    for module in _PROVIDERS.get(kind, []):
        if until is not None and until in _REGISTRY.get(kind, {}):
            return
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            # A provider that is not written yet is fine; a provider whose own imports fail is not.
            if e.name != module:
                raise


def names(kind: str) -> list[str]:
    _load_providers(kind)
    return sorted(_REGISTRY.get(kind, {}))


def lookup(kind: str, name: str) -> Any:
    _load_providers(kind, until=name)
    table = _REGISTRY.get(kind, {})
    if name in table:
        return table[name]
    known = sorted(table)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"unknown {kind} {name!r}{hint} (known: {', '.join(known) or 'none'})")
