"""DPO loss, response-only log-probs/PPL, encoding and MACPO's selection pieces (no Ray)."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from lathe.data import preference as P
from lathe.methods import alignment as A
from lathe.methods.alignment import dpo as D
from lathe.methods.alignment import macpo as M
from lathe.methods.alignment.encoding import encode, encode_pair, pair_collate, prompt_ids
from lathe.methods.sft import IGNORE

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tok_model():
    from lathe.platform.zoo import build_tiny, train_tokenizer

    rows = P.preference_synthetic(seed=0, n=200, style="hh")
    tok = train_tokenizer([r["chosen"] + r["rejected"] for r in rows], vocab_size=512)
    torch.manual_seed(0)
    return tok, build_tiny("tiny-1m", vocab_size=len(tok), seed=0)


def batch_of(tok, rows, max_prompt=64, max_response=48):
    items = [encode_pair(tok, r["prompt"], r["chosen"], r["rejected"], max_prompt, max_response) for r in rows]
    return pair_collate(tok.pad_token_id)(items)


def hh_rows(n, seed=0):
    recs = P.preference_synthetic(seed=seed, n=n, style="hh")
    return P.hh_rows(recs, "synthetic").rows


def test_loss_is_ln2_when_policy_equals_reference(tok_model):
    tok, model = tok_model
    b = batch_of(tok, hh_rows(6))
    with torch.no_grad():
        pc, pr = D.pair_logps(model, b, tok.pad_token_id)
    loss, m = D.dpo_loss(pc, pr, pc.clone(), pr.clone(), beta=0.1)
    assert abs(float(loss) - math.log(2)) < 1e-6
    assert m["reward_margin"] == 0 and m["reward_accuracy"] == 0


def test_dpo_loss_hand_value_and_scale():
    pc, pr = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    rc, rr = torch.tensor([-3.5, -5.0]), torch.tensor([-3.0, -2.5])
    loss, m = D.dpo_loss(pc, pr, rc, rr, beta=0.5)
    z = 0.5 * ((pc - rc) - (pr - rr))  # [1.0, -0.25]
    expect = -(F.logsigmoid(z)).mean()
    assert float(loss) == pytest.approx(float(expect), abs=1e-7)
    assert m["reward_accuracy"] == 0.5 and m["rewards_chosen"] == pytest.approx(0.125)


def test_one_dpo_step_raises_the_margin(tok_model):
    import copy

    tok, base = tok_model
    model = copy.deepcopy(base)
    b = batch_of(tok, hh_rows(4))
    with torch.no_grad():
        rc, rr = D.pair_logps(model, b, tok.pad_token_id)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    pc, pr = D.pair_logps(model, b, tok.pad_token_id)
    loss, before = D.dpo_loss(pc, pr, rc, rr, beta=0.1)
    loss.backward()
    opt.step()
    with torch.no_grad():
        pc, pr = D.pair_logps(model, b, tok.pad_token_id)
    _, after = D.dpo_loss(pc, pr, rc, rr, beta=0.1)
    assert before["reward_margin"] == 0 and after["reward_margin"] > 1e-3


def test_logps_count_response_tokens_only():
    torch.manual_seed(1)
    logits = torch.randn(1, 10, 7)
    ids = torch.randint(0, 7, (1, 10))
    short = ids.clone()
    short[0, :6] = IGNORE  # prompt = 6 tokens, response = 4
    longer = ids.clone()
    longer[0, :3] = IGNORE  # the same logits with a shorter prompt mask counts more tokens
    s, n = D.sequence_logps(logits, short)
    assert int(n) == 4
    lp = torch.log_softmax(logits[0, :-1], -1)
    hand = sum(float(lp[t - 1, ids[0, t]]) for t in range(6, 10))
    assert float(s) == pytest.approx(hand, abs=1e-5)
    assert int(D.sequence_logps(logits, longer)[1]) == 7


def test_logps_and_ppl_unchanged_by_padding_and_prompt_masking(tok_model):
    tok, model = tok_model
    rows = hh_rows(3)
    prompts, resp = [r["prompt"] for r in rows], [r["chosen"] for r in rows]
    alone = [A.response_logps(model, tok, [p], [y])[0] for p, y in zip(prompts, resp)]
    padded = A.response_logps(model, tok, prompts + ["\n\nHuman: " + "long " * 40 + "\n\nAssistant:"],
                              resp + ["a much longer response " * 5], batch_size=8)
    for (s1, n1), (s2, n2) in zip(alone, padded):
        assert n1 == n2 and s1 == pytest.approx(s2, abs=1e-4)
    # n counts the response (+eos) tokens only, never the prompt
    enc = encode(tok, prompts[0], resp[0], 64, 48)
    assert alone[0][1] == sum(1 for x in enc["labels"] if x != IGNORE) == len(tok(" " + resp[0].strip(),
                                                                                 add_special_tokens=False)["input_ids"]) + 1


def test_ppl_is_exp_mean_response_nll(tok_model):
    tok, model = tok_model
    r = hh_rows(1)[0]
    ppl = A.response_ppl(model, tok, [r["prompt"]], [r["chosen"]])[0]
    enc = encode(tok, r["prompt"], r["chosen"], 512, 256)
    ids = torch.tensor([enc["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1]
    labels = torch.tensor(enc["labels"][1:])
    keep = labels != IGNORE
    nll = F.cross_entropy(logits[keep], labels[keep])
    assert ppl == pytest.approx(math.exp(float(nll)), rel=1e-6)


def test_prompt_truncation_drops_oldest_turns_first(tok_model):
    tok, _ = tok_model
    prompt = "\n\nHuman: first question here\n\nAssistant: first answer\n\nHuman: How do I bake bread?\n\nAssistant:"
    full = prompt_ids(tok, prompt, 512)
    last = prompt_ids(tok, "\n\nHuman: How do I bake bread?\n\nAssistant:", 512)
    cut = prompt_ids(tok, prompt, len(full) - 1)
    assert cut == last  # the whole oldest exchange went, the last question stayed intact
    tiny = prompt_ids(tok, prompt, 5)
    assert len(tiny) == 5 and tiny[1:] == last[-4:]  # then the oldest tokens (bos kept)


def test_chat_template_renders_hh_turns(tok_model):
    import copy

    tok, _ = tok_model
    t = copy.deepcopy(tok)
    t.chat_template = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
                       "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    text = t.decode(prompt_ids(t, "\n\nHuman: hi\n\nAssistant: yo\n\nHuman: bye\n\nAssistant:", 512))
    assert text == "<|user|>hi\n<|assistant|>yo\n<|user|>bye\n<|assistant|>"


def test_argmin_and_ties_to_lowest_index():
    assert M.argmin_ppl({0: 3.0, 1: 2.0, 2: 5.0}, [0, 1, 2]) == 1
    assert M.argmin_ppl({0: 2.0, 1: 2.0, 2: 2.0}, [2, 1]) == 1
    assert M.argmin_ppl({0: 1.0, 1: 2.0, 2: 0.5}, [0, 1]) == 0  # agent 2 is not allowed
    with pytest.raises(ValueError):
        M.argmin_ppl({}, [])


def _round(n_teachers=3, n=40, seed=0):
    rng = random.Random(seed)
    agents = list(range(n_teachers + 1))
    prompts = [f"q{i}" for i in range(n)]
    responses = {a: [f"agent{a} answer {i}" for i in range(n)] for a in agents}
    ppl = [{a: rng.choice([1.0, 2.0, 3.0]) for a in agents} for _ in range(n)]  # many ties, own often lowest
    return agents, prompts, responses, ppl


def test_never_own_positive_unless_no_mp():
    agents, prompts, responses, ppl = _round()
    K = len(agents) - 1
    for a in agents:
        rows, _ = M.build_pairs(a, prompts, responses, ppl, [f"neg{a} {i}" for i in range(40)], K, M.Ablations())
        assert len(rows) == 40
        for r in rows:
            assert r["positive_from"] != a
            allowed = [b for b in agents if b != a] if a < K else list(range(K))
            assert r["positive_from"] == min(allowed, key=lambda b: (ppl[r["prompt_index"]][b], b))
            assert r["chosen"] == responses[r["positive_from"]][r["prompt_index"]]
        own, _ = M.build_pairs(a, prompts, responses, ppl, [f"neg{a} {i}" for i in range(40)], K,
                               M.Ablations(no_mp=True))
        assert all(r["positive_from"] == a for r in own)
    st, _ = M.build_pairs(0, prompts, responses, ppl, ["n"] * 40, K, M.Ablations(), "student_only")
    assert all(r["positive_from"] == K for r in st)


def test_negatives_come_from_own_negative_agent_and_drops():
    agents, prompts, responses, ppl = _round(n=6)
    negs = ["my own negative"] * 6
    negs[1] = ""  # empty: dropped
    negs[2] = "  " + responses[1][2].replace(" ", "   ") + " "  # equal to the positive up to whitespace
    ppl[2] = {0: 9.0, 1: 1.0, 2: 9.0, 3: 9.0}
    rows, drops = M.build_pairs(0, prompts, responses, ppl, negs, 3, M.Ablations(), negative_label="neg0")
    assert drops["empty"] == 1 and drops["same"] == 1 and len(rows) == 4
    assert all(r["rejected"] == "my own negative" and r["negative_from"] == "neg0" for r in rows)
    ro, _ = M.build_pairs(0, prompts, responses, ppl, negs, 3,
                          M.Ablations(no_hn=True, hn_ablation_negative="random_other"))
    assert all(r["negative_from"] not in (0, r["positive_from"]) for r in ro)
    assert all(r["rejected"] == responses[r["negative_from"]][r["prompt_index"]] for r in ro)


def test_ppl_quantile_filter_drops_the_top_positives():
    agents, prompts, responses, _ = _round(n=10)
    ppl = [{a: float(i + 1) for a in agents} for i in range(10)]
    rows, drops = M.build_pairs(3, prompts, responses, ppl, ["neg"] * 10, 3, M.Ablations(), ppl_filter_quantile=0.2)
    assert drops["ppl_quantile"] == 2 and max(r["positive_ppl"] for r in rows) == 8.0


def test_ablation_switches_and_seeds():
    assert M.updated_agents(3, M.Ablations()) == [0, 1, 2, 3]
    assert M.updated_agents(3, M.Ablations(no_iw=True)) == [3]
    assert not M.uses_dpo(M.Ablations(no_hn=True)) and M.uses_dpo(M.Ablations(no_hn=True,
                                                                                 hn_ablation_negative="random_other"))
    assert M.agent_seed(0, 1, 2) == M.agent_seed(0, 1, 2)
    assert len({M.agent_seed(s, t, a) for s in range(2) for t in range(3) for a in range(4)}) == 24


def test_trl_sigmoid_dpo_loss_parity(tok_model, tmp_path):
    """Our response-sum log-probs + sigmoid loss on TRL's own batch equal DPOTrainer's loss."""
    pytest.importorskip("trl")
    import copy

    from trl_parity import trl_loss_on_first_batch, trl_trainer

    tok, base = tok_model
    ref = copy.deepcopy(base)
    policy = copy.deepcopy(base)
    torch.manual_seed(3)
    with torch.no_grad():  # policy != reference, so the loss is not just ln 2
        for p in policy.parameters():
            p.add_(0.02 * torch.randn_like(p))
    rows = hh_rows(8)
    for beta in (0.1, 0.5):
        trainer = trl_trainer(policy, tok, rows, str(tmp_path / f"trl{beta}"), beta=beta, ref_model=ref, batch_size=4)
        theirs, batch = trl_loss_on_first_batch(trainer)
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, IGNORE)
        with torch.no_grad():
            lp, n = D.sequence_logps(policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                     labels)
            lr, _ = D.sequence_logps(ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                     labels)
        pc, pr = lp.chunk(2)
        rc, rr = lr.chunk(2)
        ours, _ = D.dpo_loss(pc, pr, rc, rr, beta=beta)
        assert abs(float(ours) - math.log(2)) > 1e-3
        assert float(ours) == pytest.approx(float(theirs), abs=1e-5)
