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


# Per-editor defaults where an LTI editor's reference preset differs from its base editor's
# (spec section 8, GPT-J-6B rows; the config classes' own defaults are ROME's and MEMIT's).
# Options the user sets win; an `lti` section is merged key by key.
EDITOR_DEFAULTS: dict[str, dict[str, Any]] = {
    "rome_lti": {"v_num_grad_steps": 25, "context_template_length_params": [[5, 10], [10, 5]],
                 "lti": {"mid_layer": None, "lambda_nll": 0.0625, "lambda_last": 0.0325, "lambda_mid": 0.0625}},
    "memit_lti": {"v_num_grad_steps": 30, "clamp_norm_factor": 0.85,
                  "lti": {"lambda_nll": 0.25, "lambda_last": 0.0325, "lambda_mid": 0.0525}},
}


def with_defaults(name: str, options: dict[str, Any]) -> dict[str, Any]:
    opts = dict(options)
    for k, v in EDITOR_DEFAULTS.get(name, {}).items():
        if k == "lti":
            given = opts.get("lti")
            opts["lti"] = {**{a: b for a, b in v.items() if b is not None}, **(given or {})} \
                if isinstance(given, dict) or given is None else given
        else:
            opts.setdefault(k, v)
    return opts


def editor_config(name: str, options: dict[str, Any], source: str = "editor"):
    """(module, validated config) for an editor name; *_lti editors get an LTI section by default,
    with their own preset's λ, steps and templates (`EDITOR_DEFAULTS`)."""
    import difflib

    from pydantic import ValidationError

    from lathe.platform.config import describe

    if name not in EDITORS:
        close = difflib.get_close_matches(name, list(EDITORS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{source}: unknown editor {name!r}{hint} (known: {', '.join(EDITORS)})")
    cls, mod, lti = EDITORS[name]
    if not lti and options.get("lti") is not None:
        raise ConfigError(f"{source}: editor {name!r} takes no 'lti' section (use {name}_lti)")
    opts = with_defaults(name, options)
    if lti and opts.get("lti") is None:
        opts["lti"] = {}
    if not lti and opts.get("lti") is not None:
        raise ConfigError(f"{source}: editor {name!r} takes no 'lti' section (use {name}_lti)")
    try:
        return mod, cls.model_validate(opts)
    except ValidationError as e:
        raise ConfigError(f"{source}: {describe(e, cls)}") from None
