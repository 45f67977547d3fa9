"""LEGO-MRTA conversation formats: chunks, the four-section conversation file, v1/v2 exports and loaders.

Four-section file (post-processed generator output):
    ### Guidelines      the chunk's summary and its steps
    ### Conversation    `Trainee: ...` / `Trainer: ...` lines
    ### Entity          the chunk's theme entities, one per line
    ### VLM_Detection   `Trainee: <query>` / `Trainer: <VLM output>` pairs
v1 rows: {"input": history lines joined by "\\n", "output": next trainer message}; split 20% test
(seed 42), then 10% of the remaining rows as validation. v2 rows (Alpaca / LLaMA-Factory):
{"instruction", "input": "", "output", "history": [[instruction, output], ...]}; split 0.2, seed 42.
Splits follow `datasets.Dataset.train_test_split` (a numpy permutation), so they match HF's.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from lathe.data.lego.manual import Manual, Step
from lathe.platform.errors import LatheError

SECTIONS = ("### Guidelines", "### Conversation", "### Entity", "### VLM_Detection")
_BOX = re.compile(r"\{<\d+><\d+><\d+><\d+>\}")


@dataclass
class Chunk:
    manual_id: str
    index: int
    steps: list[Step]
    summary: str

    @property
    def first(self) -> int:
        return self.steps[0].instruction_id

    def text(self, max_words: int | None = None) -> str:
        lines = [self.summary] + [f"Step {s.instruction_id}: {s.text}" for s in self.steps]
        words = "\n".join(lines).split(" ")
        if max_words is not None and len(words) > max_words:
            words = words[:max_words]
        return " ".join(words)

    def entities(self) -> list[str]:
        return list(dict.fromkeys(e for s in self.steps for e in s.entities))

    def vlm_pairs(self) -> list[tuple[str, str]]:
        return [(s.vlm["query"], s.vlm["MiniGPTv2_output"]) for s in self.steps
                if s.vlm and s.vlm.get("task_label", "None") != "None" and s.vlm.get("query")]


def chunk_manual(manual: Manual, size: int = 10) -> list[Chunk]:
    """Chunks of `size` steps; each opens with a summary instruction."""
    if size < 1:
        raise LatheError("chunk size must be at least 1")
    out = []
    for i in range(0, manual.n_steps, size):
        steps = manual.steps[i:i + size]
        pieces = list(dict.fromkeys(e for s in steps for e in s.entities))
        name = f" of the {manual.title}" if manual.title else ""
        shown = ", ".join(pieces[:8]) + (" and more" if len(pieces) > 8 else "")
        summary = (f"Summary: build steps {steps[0].instruction_id} to {steps[-1].instruction_id}{name} "
                   f"(manual {manual.manual_id}), using {shown or 'the pieces shown'}.")
        out.append(Chunk(manual.manual_id, len(out), steps, summary))
    return out


def max_chunk_words(context_tokens: int = 16385) -> int:
    """Chunk text cap: about 0.9 x the generator's context size, counted in words."""
    return int(0.9 * context_tokens)


@dataclass
class Conversation:
    guidelines: str
    turns: list[tuple[str, str]]                 # ("Trainee" | "Trainer", text)
    entities: list[str] = field(default_factory=list)
    vlm: list[tuple[str, str]] = field(default_factory=list)
    manual_id: str = ""
    chunk: int = 0

    def lines(self) -> list[str]:
        return [f"{who}: {text}" for who, text in self.turns]

    def to_text(self) -> str:
        vlm = [f"Trainee: {q}\nTrainer: {a}" for q, a in self.vlm]
        return "\n".join([SECTIONS[0], self.guidelines, SECTIONS[1], *self.lines(), SECTIONS[2], *self.entities,
                          SECTIONS[3], *vlm]) + "\n"


def postprocess(raw: str, guidelines: str, entities: Sequence[str], vlm: Sequence[tuple[str, str]],
                manual_id: str = "", chunk: int = 0) -> Conversation:
    """Generator output -> the four sections. Keeps `Trainee:`/`Trainer:` lines (case and markdown
    decoration tolerated, continuation lines joined to the utterance above), drops titles and prose."""
    body = raw.split("### Conversation", 1)[-1]
    turns: list[tuple[str, str]] = []
    speaker = re.compile(r"^\W*(trainee|trainer)\W*:\s*(.*)$", re.IGNORECASE)
    for line in body.splitlines():
        s = line.strip()
        if not s:
            continue
        if s.startswith("###"):
            break
        m = speaker.match(s)
        if m:
            who = m.group(1).capitalize()
            text = m.group(2).strip().strip("*").strip()
            if text:
                turns.append((who, text))
        elif turns and not s.startswith("#") and not (s.startswith("**") and s.endswith("**")):
            who, text = turns[-1]
            turns[-1] = (who, f"{text} {s}")
    return Conversation(guidelines, turns, list(entities), list(vlm), manual_id, chunk)


def parse_conversation_file(text: str, source: str = "conversation") -> Conversation:
    """Read back a four-section file; one clear error when a section is missing or out of order."""
    pos = []
    for h in SECTIONS:
        i = text.find(h)
        if i < 0:
            raise LatheError(f"{source}: missing section {h!r}")
        pos.append(i)
    if pos != sorted(pos):
        raise LatheError(f"{source}: sections must appear in the order {', '.join(SECTIONS)}")
    parts = [text[pos[k] + len(SECTIONS[k]):(pos[k + 1] if k + 1 < 4 else len(text))].strip("\n")
             for k in range(4)]
    conv = postprocess(SECTIONS[1] + "\n" + parts[1], parts[0].strip(), [], [])
    conv.entities = [e.strip() for e in parts[2].splitlines() if e.strip()]
    vl = [ln for ln in parts[3].splitlines() if ln.strip()]
    conv.vlm = [(vl[i].split(":", 1)[1].strip(), vl[i + 1].split(":", 1)[1].strip()) for i in range(0, len(vl) - 1, 2)]
    return conv


# ---- exports ---------------------------------------------------------------------------------


def v1_rows(conv: Conversation) -> list[dict]:
    """One row per trainer message: the dialogue lines before it, joined by newlines."""
    lines = conv.lines()
    return [{"input": "\n".join(lines[:i]), "output": text}
            for i, (who, text) in enumerate(conv.turns) if who == "Trainer" and i > 0]


def v2_rows(conv: Conversation) -> list[dict]:
    """Alpaca rows: consecutive trainer lines merged; the instruction is the previous trainee utterance
    (or the guidelines line when the trainer speaks first); VLM pairs come last and, since they carry
    box coordinates, never enter a later row's history."""
    merged: list[tuple[str, str]] = []
    for who, text in conv.turns:
        if merged and merged[-1][0] == who == "Trainer":
            merged[-1] = (who, merged[-1][1] + " " + text)
        else:
            merged.append((who, text))
    rows, history, pending = [], [], None
    guide = "### Guidelines: " + " ".join(conv.guidelines.split())
    for who, text in merged:
        if who == "Trainee":  # two trainee lines in a row: the latest is the question
            pending = text
            continue
        instruction = pending if pending is not None else guide
        rows.append({"instruction": instruction, "input": "", "output": text, "history": [list(h) for h in history]})
        history.append([instruction, text])
        pending = None
    for q, a in conv.vlm:
        rows.append({"instruction": q, "input": "", "output": a,
                     "history": [list(h) for h in history if not _BOX.search(h[1])]})
    return rows


def hf_split(n: int, test_size: float, seed: int = 42) -> tuple[list[int], list[int]]:
    """(train, test) indices exactly as `datasets.Dataset.train_test_split(test_size, seed=seed)`."""
    import numpy as np

    n_test = math.ceil(test_size * n)
    n_train = math.floor((1 - test_size) * n)
    perm = np.random.default_rng(seed).permutation(n)
    return perm[n_test:n_test + n_train].tolist(), perm[:n_test].tolist()


def split_v1(rows: list[dict], seed: int = 42) -> dict[str, list[dict]]:
    train, test = hf_split(len(rows), 0.2, seed)
    tr_rows = [rows[i] for i in train]
    tr, va = hf_split(len(tr_rows), 0.1, seed)
    return {"train": [tr_rows[i] for i in tr], "validation": [tr_rows[i] for i in va], "test": [rows[i] for i in test]}


def split_v2(rows: list[dict], seed: int = 42) -> dict[str, list[dict]]:
    train, test = hf_split(len(rows), 0.2, seed)
    return {"train": [rows[i] for i in train], "test": [rows[i] for i in test]}


def write_rows(rows: Iterable[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _read_rows(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise LatheError(f"{path}: no such data file")
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise LatheError(f"{path}: reading parquet needs pyarrow") from None
        return pq.read_table(path).to_pylist()
    text = path.read_text()
    try:
        if text.lstrip().startswith("["):
            return json.loads(text)
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise LatheError(f"{path}: not valid JSON/JSONL ({e.msg} at line {e.lineno})") from None


def load_v1(path: str | Path) -> list[dict]:
    """Published v1 rows {input, output} (JSON list, JSONL or parquet)."""
    rows = _read_rows(path)
    for i, r in enumerate(rows, 1):
        if not isinstance(r, dict) or not isinstance(r.get("input"), str) or not isinstance(r.get("output"), str):
            raise LatheError(f"{path}: row {i}: expected string fields 'input' and 'output'")
    return rows


def load_v2(path: str | Path) -> list[dict]:
    """Published v2 rows {instruction, input, output, history} (JSON list, JSONL or parquet)."""
    rows = _read_rows(path)
    for i, r in enumerate(rows, 1):
        if not isinstance(r, dict):
            raise LatheError(f"{path}: row {i}: expected an object")
        for k in ("instruction", "input", "output"):
            if not isinstance(r.get(k), str):
                raise LatheError(f"{path}: row {i}: expected a string field {k!r}")
        hist = r.get("history", [])
        if hist is None:
            hist = []
        if not isinstance(hist, list) or not all(isinstance(h, (list, tuple)) and len(h) == 2 for h in hist):
            raise LatheError(f"{path}: row {i}: history must be a list of [instruction, output] pairs")
        r["history"] = [[str(a), str(b)] for a, b in hist]
    return rows


# ---- prompt layout for fine-tuning and evaluation ---------------------------------------------

PROMPT_HEADER = ("Below is a conversation between an assistant (the trainer) and a user (a trainee assembling "
                 "LEGO in mixed reality). Write the assistant's next reply.")


def render_v2_context(row: dict) -> str:
    lines = []
    for ins, out in row.get("history", []):
        lines += [f"Trainee: {ins}", f"Trainer: {out}"]
    ins = row["instruction"] + (("\n" + row["input"]) if row.get("input") else "")
    lines.append(f"Trainee: {ins}")
    return "\n".join(lines)


def sft_prompt(context: str) -> str:
    """Spec layout: an instruction header, `### Context:` with the dialogue, then `### Response:`."""
    return f"{PROMPT_HEADER}\n\n### Context:\n{context}\n\n### Response:\n"


def v1_prompt(row: dict) -> str:
    return sft_prompt(row["input"])


def v2_prompt(row: dict, max_history: int | None = None) -> str:
    if max_history is not None:
        row = {**row, "history": row.get("history", [])[-max_history:] if max_history else []}
    return sft_prompt(render_v2_context(row))
