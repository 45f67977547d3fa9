"""Knowledge editors (pure PyTorch): FT-L, ROME, MEMIT and their LTI variants, by name.

`EDITORS[name] -> (config class, apply function, lti_default)`. Each `apply(model, tok, requests,
cfg, stats, templates)` edits the model in place and returns an `EditResult` with the new
weights and the originals; `restore(model, result.originals)` undoes it bitwise.
"""

from __future__ import annotations

from typing import Any

from lathe.methods.editing import ft_l, memit, rome
from lathe.methods.editing.common import EditResult, restore  # noqa: F401
from lathe.methods.editing.target import LTIConfig
from lathe.platform.errors import ConfigError

EDITORS: dict[str, tuple[type, Any, bool]] = {
    "ft_l": (ft_l.FTConfig, ft_l, False),
    "rome": (rome.RomeConfig, rome, False),
    "memit": (memit.MemitConfig, memit, False),
    "rome_lti": (rome.RomeConfig, rome, True),
    "memit_lti": (memit.MemitConfig, memit, True),
}


def editor_config(name: str, options: dict[str, Any], source: str = "editor"):
    """(module, validated config) for an editor name; *_lti editors get an LTI section by default."""
    import difflib

    from pydantic import ValidationError

    from lathe.platform.config import describe

    if name not in EDITORS:
        close = difflib.get_close_matches(name, list(EDITORS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{source}: unknown editor {name!r}{hint} (known: {', '.join(EDITORS)})")
    cls, mod, lti = EDITORS[name]
    opts = dict(options)
    if lti and opts.get("lti") is None:
        opts["lti"] = {}
    if not lti and opts.get("lti") is not None:
        raise ConfigError(f"{source}: editor {name!r} takes no 'lti' section (use {name}_lti)")
    try:
        return mod, cls.model_validate(opts)
    except ValidationError as e:
        raise ConfigError(f"{source}: {describe(e, cls)}") from None
