"""Editors, LTI and the EVOKE metrics on tiny models; the last test edits the graph-trained knowledge model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lathe.data import evoke
from lathe.eval import evoke as ev
from lathe.methods.editing import editor_config, restore
from lathe.methods.editing import common as C
from lathe.methods.editing.target import LTIConfig, TargetSpec, build_batch, optimize_target, teacher_distributions

torch.set_num_threads(1)
FAST = {"cov_ridge": 1e-3, "context_template_length_params": [[3, 1]], "v_weight_decay": 1e-3,
        "clamp_norm_factor": 50.0, "v_num_grad_steps": 8}


@pytest.fixture(scope="module")
def world():
    from lathe.platform.zoo import build_tiny, train_tokenizer

    main, subj, kg = evoke.evoke_synthetic(0, n_main=20, n_subj=10, n_relations=3)
    tok = train_tokenizer([p + " " + a for p, a in evoke.knowledge_corpus(kg)], vocab_size=512)
    model = build_tiny("tiny-1m", vocab_size=len(tok), seed=0, initializer_range=0.1).eval()
    res = C.Resolver.of(model)
    stats = C.load_or_compute_stats(model, tok, res, [1, 2], evoke.stats_corpus(kg, n=60), 60, None)
    return model, tok, main, subj, kg, stats


def target_nll(model, tok, req):
    return ev.candidate_nll(model, tok, [(req.text, req.target_new)])[0]


def test_rome_rank_one_hits_v_star_and_restores(world):
    model, tok, main, _, _, stats = world
    req = evoke.EditRequest.from_record(main[0])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    nll0 = target_nll(model, tok, req)
    mod, cfg = editor_config("rome", {**FAST, "layer": 1})
    res = mod.apply(model, tok, [req], cfg, stats)
    (name, delta), = res.deltas().items()
    assert name == "model.layers.1.mlp.down_proj.weight"
    assert torch.linalg.matrix_rank(delta.double(), rtol=1e-6) == 1
    info = res.info["requests"][0]
    module = C.Resolver.of(model).rewrite(1)
    _, out = C.io_at_subject(model, tok, module, [req.text], [req.subject])
    assert torch.allclose(out[0], info["v_star"], rtol=1e-3, atol=1e-3 * info["v_star"].norm())
    assert target_nll(model, tok, req) < nll0
    restore(model, res.originals)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_memit_solve_identity_and_single_edit_like_rome(world):
    model, tok, main, _, _, stats = world
    reqs = [evoke.EditRequest.from_record(r) for r in main[:3]]
    mod, cfg = editor_config("memit", {**FAST, "layers": [1, 2], "mom2_update_weight": 10.0})
    res = mod.apply(model, tok, reqs, cfg, stats)
    for chk in res.info["solve"]:
        lhs = chk["upd"] @ chk["A"]
        rhs = chk["resid"] @ chk["K"].T
        assert (lhs - rhs).norm() / rhs.norm() < 1e-6
    restore(model, res.originals)
    # one edit: MEMIT and ROME both move the target the same way
    r0 = reqs[0]
    nll0 = target_nll(model, tok, r0)
    m1 = mod.apply(model, tok, [r0], cfg, stats)
    nll_memit = target_nll(model, tok, r0)
    restore(model, m1.originals)
    rmod, rcfg = editor_config("rome", {**FAST, "layer": 2})
    r1 = rmod.apply(model, tok, [r0], rcfg, stats)
    nll_rome = target_nll(model, tok, r0)
    restore(model, r1.originals)
    assert nll_memit < nll0 and nll_rome < nll0


def test_memit_batch_moves_every_target(world):
    """One MEMIT update for six requests lowers the target NLL of (nearly) every request. On this
    random-weight model one of the six does not move (7.0 -> 7.05), so "every edit succeeds" is not
    asserted here; see docs/editing.md for the graph-trained numbers."""
    model, tok, main, _, _, stats = world
    reqs = [evoke.EditRequest.from_record(r) for r in main[:6]]
    before = [target_nll(model, tok, r) for r in reqs]
    mod, cfg = editor_config("memit", {**FAST, "layers": [1, 2], "mom2_update_weight": 10.0,
                                       "v_num_grad_steps": 15})
    res = mod.apply(model, tok, reqs, cfg, stats)
    after = [target_nll(model, tok, r) for r in reqs]
    restore(model, res.originals)
    assert sum(after) < sum(before) and sum(a < b for a, b in zip(after, before)) >= 5, (before, after)


def test_ft_l_respects_norm_bound(world):
    model, tok, main, _, _, _ = world
    reqs = [evoke.EditRequest.from_record(r) for r in main[:2]]
    mod, cfg = editor_config("ft_l", {"layers": [0, 1], "num_steps": 5, "lr": 1e-2, "norm_constraint": 1e-3})
    res = mod.apply(model, tok, reqs, cfg)
    for n, d in res.deltas().items():
        assert d.abs().max() <= 1e-3 + 1e-7
        assert d.abs().max() > 5e-4  # it moved, up to the bound
    restore(model, res.originals)
    # unconstrained FT goes further
    _, cfg2 = editor_config("ft_l", {"layers": [0], "num_steps": 5, "lr": 1e-2, "norm_constraint": None})
    res2 = mod.apply(model, tok, reqs, cfg2)
    assert max(d.abs().max() for d in res2.deltas().values()) > 1e-3
    restore(model, res2.originals)


def test_kl_direction_on_asymmetric_inputs():
    p = torch.tensor([[0.7, 0.2, 0.1]])
    q = torch.tensor([[0.4, 0.4, 0.2]])
    want = float((p * (p.log() - q.log())).sum())
    got = float(C.kl_rows(p.log(), q.log()))
    assert abs(got - want) < 1e-6
    swapped = float(C.kl_rows(q.log(), p.log()))
    assert abs(swapped - float((q * (q.log() - p.log())).sum())) < 1e-6 and abs(swapped - got) > 1e-3


def test_lti_with_zero_kl_weights_is_the_base_loss(world):
    model, tok, main, _, _, _ = world
    req = evoke.EditRequest.from_record(main[1])
    res = C.Resolver.of(model)
    templates = ["{}", "Because it. {}"]
    base = TargetSpec("mlp", 1, 0.5, 6, 1e-3, 50.0, kl_factor=0.0)
    lti = TargetSpec("mlp", 1, 0.5, 6, 1e-3, 50.0, kl_factor=0.0625, mid_layer=2,
                     lti=LTIConfig(lambda_nll=1.0, lambda_last=0.0, lambda_mid=0.0))
    d1, i1, a = optimize_target(model, tok, res, req, templates, base)
    d2, i2, b = optimize_target(model, tok, res, req, templates, lti)
    assert a["losses"] == b["losses"] and torch.equal(d1, d2)
    assert a["losses"][-1] < a["losses"][0]


@pytest.mark.parametrize("side", ["right", "left"])
def test_lti_empty_prefix_zero_kl(world, side):
    model, tok, main, _, _, _ = world
    req = evoke.EditRequest.from_record(main[2])
    spec = TargetSpec("mlp", 1, 0.5, 1, 1e-3, 50.0, 0.0, padding_side=side, mid_layer=2,
                      lti=LTIConfig(icl_template="", constr_pos="all"))
    _, _, info = optimize_target(model, tok, C.Resolver.of(model), req, ["{}", "Because it. {}"], spec)
    assert info["last"]["kl_last"] < 1e-6 and info["last"]["kl_mid"] < 1e-6


def test_lti_teacher_positions_end_aligned_and_legacy(world):
    model, tok, main, _, _, _ = world
    req = evoke.EditRequest.from_record(main[3])
    templates = ["{}", "Because it. {}"]
    tgt = C.continuation_ids(tok, req.text, req.target_new)
    student, _, _ = build_batch(tok, req, templates, tgt, "", "{} is a", "right")
    spec = TargetSpec("mlp", 1, 0.5, 1, 1e-3, 4.0, 0.0, mid_layer=2, lti=LTIConfig())
    t = teacher_distributions(model, tok, C.Resolver.of(model), req, templates, tgt, spec, student)
    ids, m = t["teacher_ids"], len(tgt)
    cols = t["teacher_tgt"].tolist()
    last_tok = tok.convert_ids_to_tokens(tok(req.subject)["input_ids"][-1])
    for row in range(len(templates)):
        pos = cols[row * m:(row + 1) * m]
        for j, p in enumerate(pos[:-1]):
            assert int(ids[row, p + 1]) == tgt[j]
        n_real = int((ids[row] != tok.pad_token_id).sum())
        assert pos[-1] == n_real - 1  # the last target position is the final input token
        assert tok.convert_ids_to_tokens(int(ids[row, t["teacher_subj"][row]])) == last_tok
    prefix = LTIConfig().icl_template.format(prompt=req.text, target=req.target_new)
    n_prefix = len(tok(prefix)["input_ids"])
    legacy = teacher_distributions(model, tok, C.Resolver.of(model), req, templates, tgt,
                                   TargetSpec("mlp", 1, 0.5, 1, 1e-3, 4.0, 0.0, mid_layer=2,
                                              lti=LTIConfig(teacher_alignment="legacy")), student)
    diff = (t["teacher_tgt"] - legacy["teacher_tgt"])[:-1]  # essence row is never prefixed
    assert torch.all(diff == n_prefix)


def test_stats_deterministic_symmetric_psd(world):
    model, tok, _, _, kg, _ = world
    texts = evoke.stats_corpus(kg, n=30)
    module = C.Resolver.of(model).rewrite(1)
    a = C.second_moment(model, tok, module, texts, 30)
    b = C.second_moment(model, tok, module, texts, 30)
    assert torch.equal(a, b) and torch.equal(a, a.T)
    assert torch.linalg.eigvalsh(a.double()).min() >= -1e-6


def test_candidate_nll_hand_computed_and_padding_invariant(world):
    model, tok, main, _, _, _ = world
    p, c = "Ixhu Vena works in", "Port Velka"
    ids = tok(p)["input_ids"]
    cont = C.continuation_ids(tok, p, c)
    assert cont == tok(" " + c)["input_ids"]  # GPT-2-style byte-level BPE
    with torch.no_grad():
        lp = F.log_softmax(model(input_ids=torch.tensor([ids + cont])).logits[0], -1)
    want = -sum(float(lp[len(ids) - 1 + j, t]) for j, t in enumerate(cont)) / len(cont)
    pairs = [(p, c), ("A much longer prompt about Olfa Ixve who lives in", "Lake Huzor"), ("x", "y z")]
    right = ev.candidate_nll(model, tok, pairs, padding_side="right")
    left = ev.candidate_nll(model, tok, pairs, padding_side="left")
    alone = ev.candidate_nll(model, tok, pairs[:1])
    assert abs(right[0] - want) < 1e-5 and abs(alone[0] - want) < 1e-5
    assert all(abs(a - b) < 1e-4 for a, b in zip(right, left))


class ToyScorer:
    def __init__(self, table):
        self.table = table

    def probs(self, pairs):
        return [self.table.get(pair, self.table.get(("*", pair[1]), 0.0)) for pair in pairs]


def test_metrics_on_hand_computed_toy():
    rec = {"requested_rewrite": {"prompt": "{} lives in", "subject": "S", "target_new": {"str": "N"},
                                 "target_true": {"str": "T"}},
           "paraphrase_prompts": ["p1", "p2"], "neighborhood_prompts": ["n1", "n2"],
           "prefix_distraction": ["d1", "d2"],
           "portability": {"New Question": "Q?", "New Answer": "A", "Original Answer": "B"}}
    mh = "Q? The answer to this question, most simply, is"
    t = {("S lives in", "N"): 0.6, ("S lives in", "T"): 0.3,
         ("p1", "N"): 0.5, ("p1", "T"): 0.1, ("p2", "N"): 0.1, ("p2", "T"): 0.2,
         ("n1", "N"): 0.2, ("n1", "T"): 0.4, ("n2", "N"): 0.5, ("n2", "T"): 0.1,
         ("d1", "N"): 0.3, ("d1", "T"): 0.3, ("d2", "N"): 0.1, ("d2", "T"): 0.9,
         (mh, "A"): 0.2, (mh, "N"): 0.1, (mh, "B"): 0.4}
    s = ev.score_main(ToyScorer(t), rec)
    assert s["efficacy"] == 1.0 and s["paraphrase"] == 0.5
    assert s["relation_specificity.EOS"] == 0.5 and math.isclose(s["relation_specificity.CAP"], 0.25)
    assert math.isclose(s["relation_specificity.DP"], 0.35)
    assert s["prefix_distraction.EOS"] == 0.5  # a tie is not a success
    assert math.isclose(s["prefix_distraction.CAP"], 0.6) and math.isclose(s["prefix_distraction.DP"], 0.2)
    assert s["multi_hop.EOS"] == 1.0 and s["multi_hop.AMS"] == 0.0
    assert (s["multi_hop.CAP"], s["multi_hop.DP"], s["multi_hop.OAP"]) == (0.2, 0.1, 0.4)
    subj = {"requested_rewrite": rec["requested_rewrite"],
            "relation_specificity": {"prompt": "q", "answer": {"value": "V", "aliases": []}}}
    s2 = ev.score_subj(ToyScorer({("q", "V"): 0.3, ("q", "N"): 0.7}), subj)
    assert s2 == {"subject_specificity.EOS": 0.0, "subject_specificity.CAP": 0.3, "subject_specificity.DP": 0.7}
    agg = ev.aggregate([s, {**s, "efficacy": 0.0}, s2])
    assert math.isclose(agg["efficacy"], 50.0) and math.isclose(agg["subject_specificity.DP"], 70.0)
    no_port = ev.score_main(ToyScorer(t), {**rec, "portability": {}})
    assert "multi_hop.EOS" not in no_port


@pytest.fixture(scope="module")
def world_dir(world, tmp_path_factory):
    from lathe.platform.zoo import save_pretrained

    model, tok = world[0], world[1]
    return str(save_pretrained(model, tok, tmp_path_factory.mktemp("edit-world")))


def test_single_restores_sequential_does_not(world, world_dir):
    """Both protocols through the edit worker (in process): after single edits every parameter is
    bitwise the unedited one; after three sequential edits the rewrite weight has moved, and the
    cumulative edits change the post-edit scores."""
    from lathe.jobs.edit import EditWorker

    model, tok, main, _, _, stats = world
    opts = {**FAST, "layer": 1, "v_num_grad_steps": 3}
    orig = {n: p.detach().clone() for n, p in model.named_parameters()}
    recs = [("main", r) for r in main[:3]]
    single = EditWorker(world_dir, "rome", opts, stats, 1, 0)
    rows = single.run_batches([[x] for x in recs], check_restore=3, gen_log=0)
    assert all(torch.equal(p, orig[n]) for n, p in single.model.named_parameters())
    assert single.weights_changed() == [] and all(r["restored_checked"] for r in rows)
    seq = EditWorker(world_dir, "rome", opts, stats, 1, 0)
    out = seq.run_sequential(recs, None)
    assert seq.weights_changed() == ["model.layers.1.mlp.down_proj.weight"]
    assert [r["pre"] for r in out["rows"]] == [r["pre"] for r in rows]  # both start from the same model
    assert any(a["post"] != b["post"] for a, b in zip(out["rows"], rows))


def test_restore_check_covers_every_parameter(world, world_dir):
    """An editor that changes a tensor it does not report is caught by the restore check; only
    the first `check_restore` cases are marked checked."""
    from lathe.jobs.edit import EditWorker
    from lathe.methods.editing import common as CC

    _, _, main, _, _, stats = world
    w = EditWorker(world_dir, "rome", {**FAST, "layer": 1, "v_num_grad_steps": 2}, stats, 1, 0)
    recs = [[("main", r)] for r in main[:3]]
    rows = w.run_batches(recs, check_restore=1, gen_log=0)
    assert [r["restored_checked"] for r in rows] == [True, False, False]

    class Sloppy:  # edits layer 1 properly, but also nudges one embedding entry past the first 4 KiB
        @staticmethod
        def apply(model, tok, reqs, cfg, stats_, templates):
            res = w.mod_real.apply(model, tok, reqs, cfg, stats_, templates)
            with torch.no_grad():
                model.model.embed_tokens.weight[-1, -1] += 1e-3
            return res

    w.mod_real, w.mod = w.mod, Sloppy
    with pytest.raises(RuntimeError, match="restore failed: 1 parameters .*embed_tokens"):
        w.run_batches(recs[:1], check_restore=1, gen_log=0)
    # the fingerprint hashes the whole tensor, not its first bytes
    t = torch.zeros(4096)
    u = t.clone()
    u[-1] = 1.0
    assert CC.tensor_fingerprint(t) != CC.tensor_fingerprint(u)
    assert CC.tensor_fingerprint(t.to(torch.bfloat16)) != CC.tensor_fingerprint(u.to(torch.bfloat16))


def test_model_fingerprint_sees_the_whole_tensor(world):
    import copy

    model = copy.deepcopy(world[0])
    fp = C.model_fingerprint(model)
    with torch.no_grad():
        model.model.embed_tokens.weight[-1, -1] += 1.0  # far past the first 4 KiB
    assert C.model_fingerprint(model) != fp


def test_stats_cache_key_has_module_and_subset_seed(world, tmp_path):
    model, tok, _, _, kg, _ = world
    texts = evoke.stats_corpus(kg, n=40)
    down = C.Resolver.of(model)
    a = C.load_or_compute_stats(model, tok, down, [1], texts, 10, tmp_path, seed=0)[1]
    b = C.load_or_compute_stats(model, tok, down, [1], texts, 10, tmp_path, seed=1)[1]
    assert not torch.equal(a, b)  # another subset of 10 of the 40 texts, not the cached seed-0 file
    up = C.Resolver.of(model, C.ModuleTemplates(rewrite="model.layers.{}.mlp.gate_proj"))
    c = C.load_or_compute_stats(model, tok, up, [1], texts, 10, tmp_path, seed=0)[1]
    assert c.shape != a.shape  # gate_proj's input is d_model wide, down_proj's d_ff
    assert len(list(tmp_path.glob("*.safetensors"))) == 3
    again = C.load_or_compute_stats(model, tok, down, [1], texts, 10, tmp_path, seed=1)[1]
    assert torch.equal(again, b)


def test_memit_update_matches_an_independent_solve(world):
    """Each layer's actual weight change equals Resid·Kᵀ(λC + KKᵀ)⁻¹ solved here in float64 from
    keys and residuals read off the model with hooks (not the values the editor reports)."""
    import copy

    model0, tok, main, _, _, stats = world
    model = copy.deepcopy(model0)
    reqs = [evoke.EditRequest.from_record(r) for r in main[:3]]
    templates = ["{}", "Because it. {}"]
    lam, layers = 10.0, [1, 2]
    mod, cfg = editor_config("memit", {**FAST, "layers": layers, "mom2_update_weight": lam})
    res = mod.apply(model, tok, reqs, cfg, stats, templates)
    Z = res.info["zs"]  # the optimised targets z_i (the inputs to the solve)
    work = copy.deepcopy(model0)
    rz = C.Resolver.of(work)

    def at_subject(module, texts, subjects, want):
        got = {}
        h = module.register_forward_hook(lambda m, i, o: got.update(i=i[0], o=o[0] if isinstance(o, tuple) else o))
        enc = C.encode(tok, texts)
        with torch.no_grad():
            work(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        h.remove()
        cols = [C.subject_last_index(tok, t, s) for t, s in zip(texts, subjects)]
        return got[want][list(range(len(texts))), cols].double()

    for i, layer in enumerate(layers):
        K = torch.stack([at_subject(rz.rewrite(layer), [t.replace("{}", r.prompt).format(r.subject) for t in templates],
                                    [r.subject] * len(templates), "i").mean(0) for r in reqs], 1)
        H = at_subject(rz.layer(layers[-1]), [r.text for r in reqs], [r.subject for r in reqs], "o").T
        resid = (Z - H) / (len(layers) - i)
        Cm = stats[layer].double() + 1e-3 * torch.trace(stats[layer].double()) / K.shape[0] * torch.eye(K.shape[0])
        want = resid @ K.T @ torch.linalg.inv(lam * Cm + K @ K.T)
        name = f"model.layers.{layer}.mlp.down_proj.weight"
        got = (res.weights[name] - res.originals[name]).double()
        assert (got - want).norm() / want.norm() < 1e-4, layer
        with torch.no_grad():  # the next layer's keys see this layer's update, as MEMIT applies it
            dict(work.named_parameters())[name].add_(want.float())


def test_lti_loss_with_nonzero_kl_weights_by_hand(world):
    """λ_last, λ_mid > 0, constr_pos=all with L_mid + 1 = the last block: the first loss equals
    λ_nll·NLL + λ_last·KL(p_last‖q_last) + λ_mid·KL(p_mid‖q_mid) computed here, with the logit lens
    as lm_head(final_norm(block output)) (norm applied once, also on the last block)."""
    import copy

    model = copy.deepcopy(world[0])
    tok, main = world[1], world[2]
    with torch.no_grad():  # a final norm with non-unit weights: applying it twice shows
        model.model.norm.weight.copy_(torch.linspace(0.5, 2.0, model.model.norm.weight.numel()))
    req = evoke.EditRequest.from_record(main[4])
    templates = ["{}", "Because it. {}"]
    lti = LTIConfig(lambda_nll=0.3, lambda_last=0.5, lambda_mid=0.7, constr_pos="all")
    spec = TargetSpec("mlp", 1, 0.5, 4, 1e-3, 50.0, 0.0, mid_layer=2, lti=lti)
    _, _, info = optimize_target(model, tok, C.Resolver.of(model), req, templates, spec)
    res = C.Resolver.of(model)
    tgt = C.continuation_ids(tok, req.text, req.target_new)
    m = len(tgt)

    def run(prefix):
        b, _, _ = build_batch(tok, req, templates, tgt, prefix, "{} is a", "right")
        outs = {}
        hs = [res.layer(l).register_forward_hook(lambda mod, i, o, l=l: outs.__setitem__(l, o[0] if isinstance(o, tuple) else o))
              for l in (2, 3)]
        with torch.no_grad():
            logits = model(input_ids=b.ids, attention_mask=b.mask).logits
            for h in hs:
                h.remove()
            lens = lambda h: F.log_softmax(model.lm_head(model.model.norm(h)).double(), -1)  # noqa: E731
            last = F.log_softmax(logits[b.tgt_rows, b.tgt_cols].double(), -1)
            n = len(b.subj)
            mid = torch.cat([lens(outs[2][list(range(n)), b.subj]),
                             lens(outs[3][b.tgt_rows[:-1], b.tgt_cols[:-1]])])
        return b, last, mid

    b, p_last, p_mid = run("")
    _, q_last, q_mid = run(lti.icl_template.format(prompt=req.text, target=req.target_new))
    kl = lambda p, q: float((p.exp() * (p - q)).sum(-1).mean())  # noqa: E731
    nll = float(-torch.stack([p_last[r * m:(r + 1) * m].gather(1, torch.tensor(tgt).view(-1, 1)).mean()
                              for r in range(b.n_rewrite)]).mean())
    kl_last, kl_mid = kl(p_last, q_last), kl(p_mid, q_mid)
    assert kl_last > 1e-3 and kl_mid > 1e-3
    want = 0.3 * nll + 0.5 * kl_last + 0.7 * kl_mid  # + wd·|δ|/|v|² = 0 at δ = 0
    assert info["losses"][0] == pytest.approx(want, rel=1e-4)
    assert info["losses"][-1] < info["losses"][0]


def test_lti_editors_get_their_own_preset_defaults():
    _, rl = editor_config("rome_lti", {})
    assert (rl.lti.lambda_nll, rl.lti.lambda_last, rl.lti.lambda_mid) == (0.0625, 0.0325, 0.0625)
    assert rl.v_num_grad_steps == 25 and rl.context_template_length_params == [[5, 10], [10, 5]]
    _, ml = editor_config("memit_lti", {})
    assert (ml.lti.lambda_nll, ml.lti.lambda_last, ml.lti.lambda_mid) == (0.25, 0.0325, 0.0525)
    assert ml.v_num_grad_steps == 30 and ml.clamp_norm_factor == 0.85
    _, r = editor_config("rome", {})
    assert r.v_num_grad_steps == 20 and r.context_template_length_params == [[5, 10], [10, 10]]
    _, mine = editor_config("rome_lti", {"v_num_grad_steps": 7, "lti": {"lambda_mid": 0.5}})
    assert mine.v_num_grad_steps == 7 and mine.lti.lambda_mid == 0.5 and mine.lti.lambda_nll == 0.0625


def test_legacy_llama_scoring_reaches_the_worker(world, world_dir):
    from lathe.jobs.edit import EditConfig, EditWorker

    assert EditConfig.model_validate({"scoring": {"legacy_llama": True}}).scoring.legacy_llama is True
    _, tok, main, _, _, stats = world
    recs = [("main", main[0])]
    plain = EditWorker(world_dir, "ft_l", {"num_steps": 1}, stats, 1, 0)
    legacy = EditWorker(world_dir, "ft_l", {"num_steps": 1}, stats, 1, 0, legacy_llama=True)
    rw = main[0]["requested_rewrite"]
    p, c = rw["prompt"].format(rw["subject"]), rw["target_new"]["str"]
    assert C.continuation_ids(tok, p, c, True) != C.continuation_ids(tok, p, c)  # byte-level: " c" vs "c"
    assert plain._score(recs) != legacy._score(recs)


def test_editor_config_errors():
    from lathe.platform.errors import ConfigError

    with pytest.raises(ConfigError, match="did you mean 'rome'"):
        editor_config("romee", {})
    with pytest.raises(ConfigError, match="takes no 'lti'"):
        editor_config("rome", {"lti": {}})
    with pytest.raises(ConfigError, match="unknown key 'lyer'"):
        editor_config("rome", {"lyer": 3})
    _, cfg = editor_config("memit_lti", {})
    assert cfg.lti is not None and cfg.lti.teacher_alignment == "end_aligned"


def test_unknown_architecture_needs_templates():
    from lathe.platform.errors import ConfigError

    m = torch.nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="modules.layers"):
        C.Resolver.of(m)
    r = C.Resolver.of(m, C.ModuleTemplates(layers="x{}", rewrite="y{}", final_norm="n", lm_head="h"))
    assert r.rewrite_name(3) == "y3"


@pytest.mark.slow  # trains the knowledge model through Ray on a fresh clone (minutes; cached after)
def test_rome_makes_target_top_token_on_graph_trained_model(ray_local):
    """On the tiny model that learned the synthetic graph (configs/edit/rome.yaml's knowledge model, trained
    once through Ray and cached), ROME makes the new object's first token the top next token of the edit
    prompt and P(o*) > P(o), where the unedited model preferred o."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from evoke_lti import knowledge_setup, stats_for

    from lathe.jobs import edit as E
    from lathe.jobs.sft import load_artifact

    cfg, model_dir, main, _, kg = knowledge_setup("rome")
    model, tok = load_artifact(model_dir)
    model.eval()
    mod, rcfg = editor_config("rome", cfg.options)
    stats = stats_for(cfg, model_dir, kg, E._layers("rome", cfg.options, Path(model_dir)))

    def top_and_prefers_new(req):
        ids = torch.tensor([tok(req.text)["input_ids"]])
        with torch.no_grad():
            top = int(model(input_ids=ids).logits[0, -1].argmax())
        nll_new, nll_true = ev.candidate_nll(model, tok, [(req.text, req.target_new), (req.text, req.target_true)])
        return top == C.continuation_ids(tok, req.text, req.target_new)[0], nll_new < nll_true

    hits = tried = 0
    for rec in main[:8]:
        req = evoke.EditRequest.from_record(rec)
        if top_and_prefers_new(req)[1]:
            continue  # the unedited model already prefers o*: nothing to show
        res = mod.apply(model, tok, [req], rcfg, stats)
        top, prefers = top_and_prefers_new(req)
        restore(model, res.originals)
        tried += 1
        hits += top and prefers
    # 6 of 6 here (2 of the 8 records already favour o* unedited); one miss is allowed for other CPUs' rounding
    assert tried >= 5 and hits >= tried - 1, (hits, tried)
