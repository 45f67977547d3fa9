"""Gold-path oracle teachers: LLM backends that answer each agent prompt from a synthetic task's
gold plan (ConAgents) or a question's gold hop chain (GenGround). They are the offline default
teacher for distillation; what they write goes through the same agents and prompts as any model,
so their trajectories have the same formats. Records they produce are marked `oracle: true`.
"""

from __future__ import annotations

import json
import re
from typing import Callable

from lathe.data.restbench import Task, template_key, url_path
from lathe.methods.agents.interpreter import run_code
from lathe.methods.agents.llm import ChatLLM, Completion

REVIEW_PASS = '{"pass": true, "feedback": ""}'


def _done(text: str) -> Completion:
    return Completion(text, 0, len(text.split()))


class OracleConAgents(ChatLLM):
    """Answers grounding / execution / observing / review (and ReAct) prompts for one task.
    `send(method, url, params)` reaches the sandbox so short observations come from real responses."""

    name = "oracle"

    def __init__(self, task: Task, send: Callable, **kw):
        super().__init__(**kw)
        if not task.plan:
            raise ValueError(f"task {task.q_id}: no gold plan (only synthetic tasks have one)")
        self.task, self.send = task, send

    def _step_by(self, text: str):
        for s in self.task.plan:
            if s["thought"] in text:
                return s
        keys = [template_key(url_path(u)) for u in re.findall(r'https?://[^\s"\']+', text)]
        for s in self.task.plan:
            if template_key(url_path(s["url"])) in keys or template_key(url_path(s["call"].split()[1])) in keys:
                return s
        return None

    def _observe(self, step) -> str:
        resp = self.send(step["method"], step["url"], step["params"])
        if resp.status == 204 or resp.body is None:
            return "the request succeeded but the resource is empty"
        ok, out, err = run_code(step["code"], resp.body)
        return out.strip() if ok else f"the response could not be read: {err}"

    def _complete(self, messages, stop, temperature, max_tokens, seed) -> Completion:
        last = messages[-1]["content"]
        if last.startswith("Review the"):
            return _done(REVIEW_PASS)
        if last.startswith("Tool documentation"):
            m = re.search(r"^Instruction: (.*)$", last, re.M)
            step = self._step_by(m.group(1) if m else last) or self.task.plan[0]
            if "\nJSON:" in last:  # the compact (student) prompt: url and params only; the thought instructs the reader
                return _done(json.dumps({"url": step["url"], "params": step["params"]}))
            return _done(json.dumps({"url": step["url"], "params": step["params"],
                                     "output_instructions": step["output_instructions"],
                                     "description": step["thought"]}))
        if last.startswith("Write Python code"):
            step = self._step_by(last.split("Output instructions:")[0])
            return _done(step["code"] if step else 'print("nothing to extract")')
        if last.startswith("Extract the requested values"):
            step = self._step_by(last.split("Output instructions:")[0])
            return _done(self._observe(step) if step else "nothing to extract")
        if last.startswith("Which candidate tool"):
            cands = re.findall(r"^\[(\d+)\] (\S+ \S+)", last, re.M)
            want = re.search(r"meant by '(.*?)'", last)
            for n, call in cands:
                if want and template_key(url_path(call.split()[1])) == template_key(url_path(want.group(1).split()[-1])):
                    return _done(n)
            return _done("1")
        if "Action Input:" in messages[0]["content"]:  # ReAct
            done = last.split("Query:")[-1].count("Observation:")
            if done >= len(self.task.plan):
                return _done(f"Thought: the request is solved\nFinal Answer: {self.task.answer}")
            s = self.task.plan[done]
            return _done(f"Thought: {s['thought']}\nAction: {s['method']} {s['url']}\n"
                         f"Action Input: {json.dumps(s['params'])}")
        # grounding (including a "Revise the last step" turn)
        transcript = last.split("Query:")[-1]
        if last.startswith("Revise the last step"):
            transcript = messages[-2]["content"].split("Query:")[-1]
        done = transcript.count("API Selection:")
        if done >= len(self.task.plan):
            return _done(f"Final Answer: {self.task.answer}")
        s = self.task.plan[done]
        return _done(f"{s['thought']}\nAPI Selection: {s['call']}")


class OracleGenGround(ChatLLM):
    """Deduction follows the gold hop chain; grounding cites the gold passage when a batch holds it;
    revision returns the gold hop answer with its sentence as the citation."""

    name = "oracle"

    def __init__(self, row: dict, passages_by_id: dict, **kw):
        super().__init__(**kw)
        if not row.get("hops"):
            raise ValueError(f"question {row.get('qid')}: no gold hop chain (only synthetic questions have one)")
        self.row, self.by_id = row, passages_by_id

    def _hop(self, text: str):
        return next((h for h in self.row["hops"] if h["sub_question"] in text), None)

    def _complete(self, messages, stop, temperature, max_tokens, seed) -> Completion:
        last = messages[-1]["content"]
        hops = self.row["hops"]
        if last.startswith("Revise a candidate"):
            h = self._hop(last.split('"""')[-1])
            if h is None:
                return _done('{"answer": "unknown", "citation": ""}')
            return _done(json.dumps({"answer": h["answer"], "citation": self._sentence(h)}))
        if last.startswith("Answer the question using only"):
            h = self._hop(last.split('"""')[-1])
            docs = last.split('"""')[1]
            p = self.by_id.get(h["passage_id"]) if h else None
            if p and f"Title: {p['title']} Text:" in docs:
                return _done(f'{h["answer"]} {{"citation": "{self._sentence(h)}"}}')
            return _done("Insufficient information")
        hist = last.split("Question: " + self.row["question"])[-1]
        i = len(re.findall(r"^Answer \d+:", hist, re.M))
        if hist.rstrip().endswith("Answer:"):
            h = self._hop(hist.split("\n")[-2] if "\n" in hist.strip() else hist)
            return _done(h["answer"] if h else "unknown")
        if i >= len(hops):
            return _done(f" So the answer is {hops[-1]['answer']}.\nAnswer {i + 1}: FINISH[{hops[-1]['answer']}]")
        h = hops[i]
        return _done(f" {h['sub_question']}\nAnswer {i + 1}: {h['answer']}")

    def _sentence(self, h) -> str:
        p = self.by_id.get(h["passage_id"])
        if not p:
            return ""
        return next((s.strip() for s in re.split(r"(?<=\.)\s", p["text"]) if h["answer"] in s), p["text"])
