"""Agent metrics: ConAgents' Path% / Success% (and RestGPT's correct-path rate), GenGround's
cover-EM and F1, report tables and a success-vs-step-budget plot. Spec sections 3.6 and 4.3."""

from __future__ import annotations

import re
import string
from collections import Counter
from pathlib import Path

from lathe.data.restbench import normalize_call, path_matches, split_call, template_key, url_path

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str, punct_to_space: bool = False) -> str:
    """Lowercase, remove punctuation (or make it a space), drop a/an/the, collapse whitespace."""
    s = str(s).lower()
    table = str.maketrans({c: (" " if punct_to_space else None) for c in string.punctuation})
    s = s.translate(table)
    return " ".join(_ARTICLES.sub(" ", s).split())


def cover_em(prediction: str, golds: list[str] | str) -> float:
    """1 if any normalised gold answer is a substring of the normalised prediction."""
    golds = [golds] if isinstance(golds, str) else golds
    p = normalize_answer(prediction)
    return float(any(normalize_answer(g) and normalize_answer(g) in p for g in golds))


def f1_score(prediction: str, golds: list[str] | str) -> float:
    """SQuAD-style token F1 (punctuation becomes a space), max over gold answers."""
    golds = [golds] if isinstance(golds, str) else golds
    best = 0.0
    pt = normalize_answer(prediction, punct_to_space=True).split()
    for g in golds:
        gt = normalize_answer(g, punct_to_space=True).split()
        common = sum((Counter(pt) & Counter(gt)).values())
        if common == 0:
            continue
        p, r = common / len(pt), common / len(gt)
        best = max(best, 2 * p * r / (p + r))
    return best


def _executed_keys(calls: list) -> list[tuple[str, str]]:
    out = []
    for c in calls:
        if isinstance(c, dict):
            out.append((c["method"].upper(), template_key(url_path(c.get("url") or c.get("template", "")))))
        else:
            m, u = split_call(c)
            out.append((m, template_key(url_path(u))))
    return out


def path_rate(solution: list[str], calls: list) -> float:
    """|{g in solution: g matches an executed call}| / |solution|; a call matches when its method and
    URL match the gold template with path variables as wildcards."""
    if not solution:
        return 1.0
    ex = _executed_keys(calls)
    hit = 0
    for g in solution:
        m, p = normalize_call(g)
        hit += any(m == em and path_matches(p, ep) for em, ep in ex)
    return hit / len(solution)


def path_rate_contains(solution: list[str], calls: list[str]) -> float:
    """The compatible fallback: plain string containment of each gold item in the predicted call list."""
    if not solution:
        return 1.0
    joined = "\n".join(calls)
    return sum(g in joined for g in solution) / len(solution)


def restgpt_path(solution: list[str], calls: list) -> float:
    """RestGPT's correct-path rate for one task: 1 if the gold path is a subsequence of the executed calls."""
    ex = _executed_keys(calls)
    i = 0
    for m, p in (normalize_call(g) for g in solution):
        while i < len(ex) and not (ex[i][0] == m and path_matches(p, ex[i][1])):
            i += 1
        if i == len(ex):
            return 0.0
        i += 1
    return 1.0


def auto_success(answer: str | None, gold: str | None) -> float:
    """`judge: auto`: the normalised gold value appears in the normalised final answer."""
    if gold is None or answer is None:
        return 0.0
    g = normalize_answer(gold)
    return float(bool(g) and g in normalize_answer(answer))


def score_conagents(tasks, trajectories: list[dict], path_metric: str = "lathe") -> dict:
    """Success% and Path% (percent) over tasks; `path_metric: restgpt` adds the correct-path rate."""
    if len(tasks) != len(trajectories):
        raise ValueError("score_conagents: one trajectory per task")
    n = len(tasks) or 1
    succ = [auto_success(t.get("answer"), task.answer) for task, t in zip(tasks, trajectories)]
    path = [path_rate(task.solution, t.get("calls", [])) for task, t in zip(tasks, trajectories)]
    out = {"tasks": len(tasks), "success": 100 * sum(succ) / n, "path": 100 * sum(path) / n,
           "finished": 100 * sum(bool(t.get("finished")) for t in trajectories) / n,
           "per_task": [{"q_id": task.q_id, "success": s, "path": p} for task, s, p in zip(tasks, succ, path)]}
    if path_metric == "restgpt":
        out["restgpt_path"] = 100 * sum(restgpt_path(task.solution, t.get("calls", []))
                                        for task, t in zip(tasks, trajectories)) / n
    return out


def score_qa(rows: list[dict], predictions: list[str]) -> dict:
    n = len(rows) or 1
    acc = [cover_em(p, r["answers"]) for r, p in zip(rows, predictions)]
    f1 = [f1_score(p, r["answers"]) for r, p in zip(rows, predictions)]
    return {"questions": len(rows), "acc": 100 * sum(acc) / n, "f1": 100 * sum(f1) / n}


def table(rows: list[dict], cols: list[str], title: str = "") -> str:
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    body = "".join("| " + " | ".join(f"{r.get(c, ''):.2f}" if isinstance(r.get(c), float) else str(r.get(c, ""))
                                     for c in cols) + " |\n" for r in rows)
    return (f"### {title}\n\n" if title else "") + head + body


def success_by_budget(tasks, trajectories: list[dict], budgets: list[int]) -> dict[int, float]:
    """Success% had the run been cut at each step budget: a task counts at budget b when it finished
    correctly within b tool steps."""
    out = {}
    n = len(tasks) or 1
    for b in budgets:
        ok = sum(auto_success(t.get("answer"), task.answer) for task, t in zip(tasks, trajectories)
                 if t.get("finished") and len(t.get("steps", [])) <= b)
        out[b] = 100 * ok / n
    return out


def plot_success_vs_budget(curves: dict[str, dict[int, float]], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, c in curves.items():
        xs = sorted(c)
        ax.plot(xs, [c[x] for x in xs], marker="o", label=name)
    ax.set_xlabel("step budget (tool calls)")
    ax.set_ylabel("Success %")
    ax.set_ylim(0, 100)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
