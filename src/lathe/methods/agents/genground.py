"""GenGround: deduce -> retrieve -> batch-ground -> revise, until FINISH[...]; plus the
retrieve-then-read baseline. Spec: shared/specs/agents.md section 4.

`retrieve(sub_question, k) -> list[str]` is any retrieval function (oracle / simulation / index
from `lathe.data.multihop.Knowledge`, or the PassageRetriever deployment through a handle).
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Literal

from lathe.methods.agents.llm import ChatLLM, LLMError

NO_ANSWER = "NO ANSWER"
INSUFFICIENT = "Insufficient information"


@dataclass
class GenGroundConfig:
    max_iters: int = 7
    n_docs: int = 10
    batch_size: int = 3
    grounding_mode: Literal["paper", "queue"] = "paper"
    json_retries: int = 3
    temperature: float = 0.0
    max_tokens: int = 200
    strategyqa: bool = False
    max_wall_s: float | None = None
    seed: int | None = 0


DEDUCE_SYSTEM = ("Answer a complex question by decomposing it into single-hop sub-questions, answered one step "
                 "at a time from your own knowledge.")

DEDUCE_FORMAT = """Use this format:
Thought 1: <a single-hop sub-question>
Answer 1: <its answer>
Thought 2: ...
Answer 2: ...
and when the question is answered: Answer n: FINISH[<entity>]
Rules: no pronouns; reuse earlier answers by name; bold key facts with **; always commit to the most likely answer."""

EXAMPLES = """Question: In which city was the founder of Velmar Works born?
Thought 1: Who founded Velmar Works?
Answer 1: Velmar Works was founded by **Anis Torhal**.
Thought 2: Where was Anis Torhal born?
Answer 2: Anis Torhal was born in **Belport**.
Thought 3: So the answer is Belport.
Answer 3: FINISH[Belport]

Question: What is the capital of the country where the director of The Quin Letters was born?
Thought 1: Who directed The Quin Letters?
Answer 1: The Quin Letters was directed by **Marel Ostvar**.
Thought 2: Where was Marel Ostvar born?
Answer 2: Marel Ostvar was born in **Rosburg**.
Thought 3: Which country is Rosburg in?
Answer 3: Rosburg is in **Dranoria**.
Thought 4: What is the capital of Dranoria?
Answer 4: The capital of Dranoria is **Selton**.
Thought 5: So the answer is Selton.
Answer 5: FINISH[Selton]

Question: Which field did the director of The Hal Journey study?
Thought 1: Who directed The Hal Journey?
Answer 1: The Hal Journey was directed by **Kel Norwen**.
Thought 2: What field did Kel Norwen study?
Answer 2: Kel Norwen studied **botany**.
Thought 3: So the answer is botany.
Answer 3: FINISH[botany]

Question: Which country is the headquarters city of Ulvar Group in?
Thought 1: Where are the headquarters of Ulvar Group?
Answer 1: Ulvar Group has its headquarters in **Istport**.
Thought 2: Which country is Istport in?
Answer 2: Istport is in **Corania**.
Thought 3: So the answer is Corania.
Answer 3: FINISH[Corania]"""

GROUND_INSTRUCTION = ("Answer the question using only the documents. If a document supports an answer, answer and "
                      "add the annotation {\"citation\": \"<the supporting sentence>\"}; otherwise reply "
                      "\"Insufficient information\".")


def deduce_messages(question: str, history: str, cfg: GenGroundConfig) -> list[dict]:
    fmt = DEDUCE_FORMAT
    if cfg.strategyqa:
        fmt += "\nThe final answer must be FINISH[True] or FINISH[False]."
    return [{"role": "system", "content": DEDUCE_SYSTEM},
            {"role": "user", "content": f"{fmt}\n\n{EXAMPLES}\n\nQuestion: {question}\n{history}"}]


def ground_messages(sub_question: str, docs: list[str]) -> list[dict]:
    block = "\n".join(docs)
    return [{"role": "user", "content": f"{GROUND_INSTRUCTION}\nDocuments:\n\"\"\"\n{block}\n\"\"\"\n"
                                        f"Question: {sub_question}"}]


def revise_messages(sub_question: str, candidate: str, docs: list[str]) -> list[dict]:
    block = "\n".join(docs)
    return [{"role": "user", "content": f"Revise a candidate answer with the documents.\nDocuments:\n\"\"\"\n{block}\n"
                                        f"\"\"\"\nQuestion: {sub_question}\nCandidate answer: {candidate}\n"
                                        "Correct the candidate if the documents disagree; keep the answer under 20 "
                                        "words. Reply as JSON {\"answer\": ..., \"citation\": ...}."}]


def normalize_output(text: str) -> str:
    """Remove [1]..[5], (), square brackets, tabs, newlines and the word FINISH."""
    s = re.sub(r"\[[1-5]\]", "", text)
    s = s.replace("FINISH", "").replace("()", "")
    s = re.sub(r"[\[\]\t\n]", " ", s)
    return " ".join(s.split())


def parse_deduction(text: str, i: int) -> tuple[str, str | None]:
    """(sub_question, answer or None). Accepts `Answer:` with or without the step index."""
    m = re.search(rf"Thought\s*{i}?\s*:\s*(.*)", text)
    q = (m.group(1) if m else next((ln for ln in text.splitlines() if ln.strip()), "")).strip()
    q = q.split("\n")[0].strip()
    a = re.search(r"Answer\s*\d*\s*:\s*(.*)", text, re.S)
    return q, (a.group(1).strip().split("\n")[0].strip() if a else None)


def finish_value(answer: str) -> str | None:
    m = re.search(r"FINISH\[(.*?)\]", answer, re.S)
    if m:
        return m.group(1)
    if "FINISH[" in answer:
        return answer.split("FINISH[", 1)[1]
    return None


def citation_of(text: str) -> str | None:
    """The citation of a grounding reply, or None when it says there is not enough information."""
    if INSUFFICIENT.lower() in text.lower():
        return None
    m = re.search(r"\{\s*\"citation\"\s*:\s*\"(.*?)\"\s*\}", text, re.S)
    if m:
        return m.group(1).strip() or None
    return None


def _f1(a: str, b: str) -> float:
    ta, tb = a.lower().split(), b.lower().split()
    common = sum((Counter(ta) & Counter(tb)).values())
    if not common:
        return 0.0
    p, r = common / len(ta), common / len(tb)
    return 2 * p * r / (p + r)


class GenGround:
    def __init__(self, llm: ChatLLM, retrieve: Callable[[str, int], list[str]], cfg: GenGroundConfig | None = None,
                 on_step: Callable[[dict], None] | None = None):
        self.llm, self.retrieve, self.cfg, self.on_step = llm, retrieve, cfg or GenGroundConfig(), on_step
        self.ground_calls = 0
        self.revise_inputs: list[list[str]] = []

    def _chat(self, msgs, tag, **kw) -> str:
        kw.setdefault("temperature", self.cfg.temperature)
        kw.setdefault("max_tokens", self.cfg.max_tokens)
        kw.setdefault("seed", self.cfg.seed)
        return self.llm.chat(msgs, tag=tag, **kw)

    def _ground(self, q: str, docs: list[str]) -> str | None:
        self.ground_calls += 1
        return citation_of(self._chat(ground_messages(q, docs), "grounding"))

    def _revise(self, q: str, candidate: str, docs: list[str]) -> tuple[str, str | None]:
        self.revise_inputs.append(list(docs))
        try:
            out = json.loads(self._chat(revise_messages(q, candidate, docs), "revise", json_mode=True))
        except LLMError:
            return candidate, None
        ans = str(out.get("answer") or candidate)
        return " ".join(ans.split()[:20]), (str(out["citation"]) if out.get("citation") else None)

    def batch_ground(self, q: str, candidate: str, docs: list[str]) -> dict:
        b = self.cfg.batch_size
        if not docs:
            return {"answer": candidate, "citation": None, "documents": []}
        if self.cfg.grounding_mode == "paper":
            for s in range(0, len(docs), b):
                batch = docs[s:s + b]
                cite = self._ground(q, batch)
                if cite:
                    ans, c2 = self._revise(q, candidate, batch)
                    return {"answer": ans, "citation": c2 or cite, "documents": batch}
            return {"answer": candidate, "citation": None, "documents": []}
        queue = list(docs)
        while len(queue) > b:
            batch, rest = queue[:b], queue[b:]
            cite = self._ground(q, batch)
            kept = [max(batch, key=lambda d: _f1(d, cite))] if cite else []
            queue = rest + kept
        ans, cite = self._revise(q, candidate, queue)
        return {"answer": ans, "citation": cite, "documents": queue}

    def answer(self, question: str) -> dict:
        t0 = time.perf_counter()
        history, steps = "", []
        for i in range(1, self.cfg.max_iters + 1):
            if self.cfg.max_wall_s is not None and time.perf_counter() - t0 > self.cfg.max_wall_s:
                return self._done(question, NO_ANSWER, steps, t0, error=f"wall-time budget of "
                                                                       f"{self.cfg.max_wall_s:g} s exceeded")
            out = self._chat(deduce_messages(question, history + f"Thought {i}:", self.cfg), "deduce",
                             stop=[f"Thought {i + 1}", "\nThought"])
            q, a = parse_deduction(f"Thought {i}:" + out if not out.lstrip().startswith("Thought") else out, i)
            q = q or question  # nothing usable: retrieve with the question itself
            if a is None:
                retry = self._chat(deduce_messages(question, history + f"Thought {i}: {q}\nAnswer: ", self.cfg),
                                   "deduce", stop=["\n"])
                a = retry.strip()
            fin = finish_value(a)
            if fin is not None:  # the final step is not grounded
                steps.append({"i": i, "sub_question": q, "answer": a, "finish": True})
                self._emit({"type": "final", "answer": normalize_output(fin)})
                return self._done(question, normalize_output(fin), steps, t0)
            docs = self.retrieve(q, self.cfg.n_docs)
            g = self.batch_ground(q, a, docs)
            steps.append({"i": i, "sub_question": q, "candidate": a, "answer": g["answer"], "citation": g["citation"],
                          "documents": docs})
            self._emit({"type": "step"} | steps[-1])
            history += f"Thought {i}: {q}\nAnswer {i}: {g['answer']}\n"
        return self._done(question, NO_ANSWER, steps, t0)

    def _done(self, question, answer, steps, t0, error=None) -> dict:
        return {"question": question, "answer": answer, "finished": answer != NO_ANSWER, "steps": steps,
                "error": error, "seconds": time.perf_counter() - t0}

    def _emit(self, e: dict) -> None:
        if self.on_step:
            self.on_step(e)


def retrieve_then_read(llm: ChatLLM, retrieve: Callable[[str, int], list[str]], question: str, n_docs: int = 10,
                       max_tokens: int = 64, seed: int | None = 0) -> dict:
    """The baseline: retrieve with the question itself, then answer from the documents in one call."""
    t0 = time.perf_counter()
    docs = retrieve(question, n_docs)
    block = "\n".join(docs)
    out = llm.chat([{"role": "user", "content": f"Documents:\n\"\"\"\n{block}\n\"\"\"\nAnswer the question with a "
                                                 f"short entity.\nQuestion: {question}\nAnswer:"}],
                   stop=["\n"], temperature=0.0, max_tokens=max_tokens, seed=seed, tag="read")
    return {"question": question, "answer": normalize_output(out), "finished": True, "documents": docs,
            "steps": [], "error": None, "seconds": time.perf_counter() - t0}
