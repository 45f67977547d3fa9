"""MACPO's selection pieces, pure Python/PyTorch: who may be whose positive, the argmin-PPL
choice, pairs with the agent's own negative agent, and the −MP / −HN / −IW switches.

Agents are indexed 0..K−1 (teachers) and K (the student). All functions are deterministic.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Literal

from pydantic import Field

from lathe.platform.config import Strict


class Ablations(Strict):
    """The paper's ablations as switches; all off = full MACPO."""

    no_mp: bool = Field(False, description="−MP: each agent's positive is its own round-t response")
    no_hn: bool = Field(False, description="−HN: no hard negatives (see hn_ablation_negative)")
    no_iw: bool = Field(False, description="−IW: teachers frozen after step 1; only the student is updated")
    hn_ablation_negative: Literal["sft", "random_other"] = Field(
        "sft", description="under −HN: 'sft' trains SFT on the positives; 'random_other' uses a random other "
                           "agent's response as y⁻")


def agent_seed(run_seed: int, round_t: int, agent: int) -> int:
    """Per-agent sampling seed = hash(run_seed, t, a), stable across processes and Python versions."""
    h = hashlib.sha256(f"{run_seed}:{round_t}:{agent}".encode()).digest()
    return int.from_bytes(h[:4], "little")


def candidates(receiver: int, n_teachers: int, ablations: Ablations,
               teacher_positive_source: Literal["others", "student_only"] = "others") -> list[int]:
    """Agents whose responses may become `receiver`'s positive (never its own, except under −MP)."""
    student = n_teachers
    if ablations.no_mp:
        return [receiver]
    if receiver == student:
        return list(range(n_teachers))
    if teacher_positive_source == "student_only":
        return [student]
    return [a for a in range(n_teachers + 1) if a != receiver]


def argmin_ppl(ppl: dict[int, float], allowed: list[int]) -> int:
    """The allowed agent with the lowest PPL; ties go to the lowest agent index."""
    if not allowed:
        raise ValueError("no candidate agents to choose a positive from")
    return min(sorted(allowed), key=lambda a: (ppl[a], a))


def normalize_ws(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def build_pairs(receiver: int, prompts: list[str], responses: dict[int, list[str]], ppl: list[dict[int, float]] | None,
                negatives: list[str], n_teachers: int, ablations: Ablations,
                teacher_positive_source: Literal["others", "student_only"] = "others",
                ppl_filter_quantile: float | None = None, seed: int = 0,
                negative_label: str = "own_negative_agent") -> tuple[list[dict], dict]:
    """(x, y⁺, y⁻) rows for `receiver` and counts of what was dropped and why.

    `responses[a][i]`: agent a's round-t response to prompt i. `ppl[i][a]`: PPL of that
    response under the receiver (needed when more than one candidate is allowed).
    `negatives[i]`: the receiver's OWN negative agent's response to prompt i.
    Every row records `positive_from` (the agent) and `negative_from`.
    """
    allowed = candidates(receiver, n_teachers, ablations, teacher_positive_source)
    rng = random.Random(seed)
    rows, drops = [], {"same": 0, "empty": 0, "ppl_quantile": 0}
    for i, x in enumerate(prompts):
        src = allowed[0] if len(allowed) == 1 else argmin_ppl(ppl[i], allowed)
        pos = responses[src][i]
        if ablations.no_hn and ablations.hn_ablation_negative == "random_other":
            others = [a for a in responses if a != src and a != receiver] or [a for a in responses if a != src]
            neg_from: int | str = rng.choice(sorted(others))
            neg = responses[neg_from][i]
        else:
            neg_from, neg = negative_label, negatives[i]
        if not pos.strip() or not neg.strip():
            drops["empty"] += 1
            continue
        if normalize_ws(pos) == normalize_ws(neg):
            drops["same"] += 1
            continue
        row = {"prompt": x, "chosen": pos, "rejected": neg, "positive_from": src, "negative_from": neg_from,
               "prompt_index": i}
        if ppl is not None and src in ppl[i]:
            row["positive_ppl"] = ppl[i][src]
        rows.append(row)
    if ppl_filter_quantile and rows and all("positive_ppl" in r for r in rows):
        vals = sorted(r["positive_ppl"] for r in rows)
        cut = vals[min(len(vals) - 1, int((1 - ppl_filter_quantile) * len(vals)))]
        kept = [r for r in rows if r["positive_ppl"] < cut or r["positive_ppl"] == vals[0]]
        drops["ppl_quantile"] = len(rows) - len(kept)
        rows = kept
    return rows, drops


def updated_agents(n_teachers: int, ablations: Ablations) -> list[int]:
    """Agents trained in a round: all, or only the student under −IW."""
    return [n_teachers] if ablations.no_iw else list(range(n_teachers + 1))


def uses_dpo(ablations: Ablations) -> bool:
    return not (ablations.no_hn and ablations.hn_ablation_negative == "sft")
