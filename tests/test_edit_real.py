"""Knowledge editing on the real pretrained model (SmolLM2-135M-Instruct): ROME rewrites facts the model
is probed to know. Slow: loading the model, probing ~530 facts, sampling the stats corpus and 20 ROME
edits take minutes on 2 cores (the probe, the corpus and the statistics are cached under runs/cache)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow]


def test_rome_makes_the_new_object_top_on_20_probed_facts_and_restores_bitwise():
    from lathe.data import world_facts as wf
    from lathe.data.evoke import EditRequest
    from lathe.jobs import edit as E
    from lathe.jobs.sft import load_artifact
    from lathe.methods.editing import editor_config, restore
    from lathe.methods.editing.common import Resolver, context_templates, load_or_compute_stats
    from lathe.platform.config import load_config

    torch.set_num_threads(2)
    cache = ROOT / "runs" / "cache"
    cfg = load_config(ROOT / "configs" / "edit" / "rome_real.yaml", [f"cache_dir={cache}", "data.n_main=20"])
    model, tok = load_artifact(E.pretrained_model_dir(cfg))
    model.eval()
    main, _, info, texts = E.world_setup_local(model, tok, cfg.data, cfg.stats, cfg.seed, cache)
    assert info["known"] >= 40 and len(main) == 20
    mod, ecfg = editor_config("rome", cfg.options)
    layer = mod.layers_for(model, ecfg)[0]
    assert layer == 5
    stats = load_or_compute_stats(model, tok, Resolver.of(model), [layer], texts, cfg.stats.n_samples,
                                  cache / "stats", cfg.seed)
    templates = context_templates(model, tok, ecfg.context_template_length_params, ecfg.template_seed)
    originals = {n: p.detach().clone() for n, p in model.named_parameters()}
    hits, misses = 0, []
    for rec in main:
        req = EditRequest.from_record(rec)
        # the probe's premise: before the edit the model answers o, not o*
        assert wf.top_tokens_match(model, tok, req.text, req.target_true), req
        res = mod.apply(model, tok, [req], ecfg, stats, templates)
        assert list(res.originals) == ["model.layers.5.mlp.down_proj.weight"]
        changed = not torch.equal(dict(model.named_parameters())[list(res.originals)[0]], res.originals[
            list(res.originals)[0]])
        ok = wf.top_tokens_match(model, tok, req.text, req.target_new)
        hits += ok
        if not ok:
            misses.append((req.text, req.target_new))
        restore(model, res.originals)
        assert changed
        for n, p in model.named_parameters():  # every weight of the model, bitwise, after every edit
            assert torch.equal(p, originals[n]), n
    assert hits >= 18, f"ROME made o* the top answer on {hits}/20 facts; misses: {misses}"
