"""The LEGO-MRTA conversation pipeline (spec section 3), offline and seeded.

For each manual: chunk it into 10-step chunks (each opening with a summary), simulate 5 random
(deduplicated) tool calls per chunk on the `AssemblySimulator`, generate a trainer-trainee
conversation grounded on the chunk, post-process it into the four sections, and regenerate it
when it mentions no tool. Generation is done by the template dialogue engine (default) or by any
LLM client (`chat(messages, ...)`: an OpenAI-compatible endpoint, lathe's own LLM app included).
`lego_synthetic` runs the whole pipeline and writes manuals, conversations, VQA pairs and the v1/v2
exports with the published split procedure.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from lathe.data.lego import (Chunk, Conversation, Manual, chunk_manual, generate_manuals, postprocess, save_manuals,
                             split_v1, split_v2, v1_rows, v2_rows, write_rows)
from lathe.data.lego.conversations import max_chunk_words
from lathe.methods.lego.simulator import AssemblySimulator
from lathe.methods.lego.tools import DIRECTIONS, TOOL_NAMES, describe_tools, tools_mentioned

INSTRUCTION = (
    "Write a dialogue between a trainer and a trainee who assembles a LEGO set in mixed reality, grounded on "
    "the guidelines below. In each step the trainee asks at least one in-depth question, raises a problem, or "
    "asks for one of the XR tools. The trainer answers and reports what the tools returned. At the end the "
    "trainer checks whether the task was completed and asks for feedback on the experience. Put a section "
    "title before each key point. Write each line as 'Trainee: ...' or 'Trainer: ...'.\n\nThe XR tools:\n"
)


def tool_args(name: str, rng: random.Random, sim: AssemblySimulator) -> dict:
    """Random canonical arguments for a tool (GoToStep sometimes out of range, as trainees do)."""
    if name == "GoToStep":
        return {"step": rng.randint(1, sim.n_steps + (2 if rng.random() < 0.15 else 0))}
    if name == "Rotate":
        return {"direction": rng.choice(DIRECTIONS[:4])}
    if name == "ShowPieces" and sim.manual is not None and sim.manual.entities() and rng.random() < 0.5:
        return {"piece_name": " ".join(rng.choice(sim.manual.entities()).split()[-2:])}  # e.g. 'brick 2x4'
    return {}


def chunk_manual_obj(chunk: Chunk) -> Manual:
    """The chunk as a manual of its own (steps renumbered from 1), for the chunk's simulator."""
    from dataclasses import replace

    steps = [replace(s, instruction_id=i) for i, s in enumerate(chunk.steps, 1)]
    return Manual(f"{chunk.manual_id}#{chunk.index}", steps)


def simulate_tool_responses(chunk: Chunk, rng: random.Random, k: int = 5) -> list[dict]:
    """Call k distinct random tools on a fresh simulator of the chunk; [{name, args, response}]."""
    sim = AssemblySimulator(manual=chunk_manual_obj(chunk), seed=rng.randrange(1 << 30))
    out = []
    for name in rng.sample(TOOL_NAMES, k):
        args = tool_args(name, rng, sim)
        out.append({"name": name, "args": args, "response": sim.call(name, args)})
    return out


def generation_query(chunk: Chunk, responses: list[dict], max_words: int | None = None) -> str:
    intents = "\n".join(f"- use {r['name']}; {r['response']}" for r in responses)
    return ("Task: help a trainee assemble LEGO in mixed reality, step by step.\n"
            f"The trainee intends to do these things in the XR app:\n{intents}\n"
            f"### Guidelines:\n{chunk.text(max_words)}\n### Conversation:")


def llm_messages(chunk: Chunk, responses: list[dict], max_words: int | None = None) -> list[dict]:
    return [{"role": "system", "content": INSTRUCTION + describe_tools()},
            {"role": "user", "content": generation_query(chunk, responses, max_words)}]


# ---- the template dialogue engine ------------------------------------------------------------

_ASK = {
    "StartAssemble": ["Can we start the assembly from the beginning?", "Let's start assembling, please."],
    "NextStep": ["I've placed it. Can we go to the next step?", "Done with this one, next step please."],
    "FrontStep": ["Can we go back one step? I want to check something.", "Please show me the previous step."],
    "Explode": ["Can you pull the model apart so I can see how the pieces fit?", "Show me an exploded view."],
    "Recover": ["Put the model back together, please.", "Can you undo the exploded view?"],
    "FinishedVideo": ["Can I see the finished model?", "Show me a video of the completed build."],
    "ReShow": ["Could you show this step again?", "I missed that, can you replay the step?"],
    "Enlarge": ["It's too small to see, can you make it bigger?", "Zoom in on the model, please."],
    "Shrink": ["It's too close, can you make it smaller?", "Zoom out a bit, please."],
    "GoToStep": ["Can we jump to step {step}?", "Take me to step {step}, please."],
    "Rotate": ["Can you turn the model {direction} so I can see the other side?", "Rotate it {direction}, please."],
    "ShowPieces": ["Which pieces do I need here?", "Can you show me the pieces for this step?"],
    "HighlightCorrectComponents": ["Where exactly does it go?", "Can you highlight the right parts for me?"],
    "GetCurrentStep": ["Which step am I on?", "Remind me, what step is this?"],
    "GetRemainingStep": ["How many steps are left?", "How much more do I have to build?"],
    "CheckStepStatusVR": ["Did I do this step right?", "Can you check my assembly so far?"],
    "APICallObjectRecognitionAR": ["I can't find the piece on my table. Can you spot it?",
                                   "Can you find the piece I need in my view?"],
    "APICallCheckStepStatusAR": ["Can you look at my real model and tell me if it's right?",
                                 "Check through the camera whether I built this step correctly."],
}
_QUESTIONS = ["Which way should the {e} face?", "How do I know the {e} is pressed down properly?",
              "Does it matter which studs the {e} covers?", "The {e} doesn't seem to fit. What am I doing wrong?",
              "What does the {e} look like?", "Is the {e} the same one as before?"]
_ANSWERS = ["{text} Press it down firmly until it clicks.", "Follow the manual here: {text}",
            "{text} Compare its position with the picture in the scene.",
            "Look at the studs carefully. {text}"]
_OPEN = ["Hi! I'm ready to build the next part.", "Hello, let's continue with the model.",
         "Hi, I have my pieces sorted. What do we do first?"]


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def template_dialogue(chunk: Chunk, rng: random.Random, k_tools: int = 5) -> str:
    """A raw generated dialogue (with section titles) for one chunk; the chosen tools really run on a
    simulator that follows the dialogue, so every reported response matches the scene's state."""
    sim = AssemblySimulator(manual=chunk_manual_obj(chunk), seed=rng.randrange(1 << 30))
    m = sim.n_steps
    tools = rng.sample(TOOL_NAMES, min(k_tools, len(TOOL_NAMES)))
    slots: dict[int, list[str]] = {}
    for t in tools:
        slots.setdefault(rng.randint(1, m), []).append(t)
    lines = ["## Getting started", f"Trainee: {rng.choice(_OPEN)}",
             f"Trainer: {_sentence(chunk.summary.removeprefix('Summary: '))} "
             f"Let's begin with step 1: {sim.step_text(1)}"]
    for k in range(1, m + 1):
        sim.set_step(k)
        step = chunk_manual_obj(chunk).step(k)
        ent = step.entities[0] if step.entities else "piece"
        lines.append(f"## Step {step.instruction_id}: the {ent}")
        if not slots.get(k):
            lines.append(f"Trainee: {rng.choice(_QUESTIONS).format(e=ent)}")
            lines.append(f"Trainer: {rng.choice(_ANSWERS).format(text=step.text)}")
        for name in slots.get(k, []):
            args = tool_args(name, rng, sim)
            ask = rng.choice(_ASK[name]).format(**args) if args else rng.choice(_ASK[name]).split("{")[0]
            res = sim.execute(name, args)
            lines.append(f"Trainee: {ask}")
            lines.append(f"Trainer: I used {name}. {res.text}")
            sim.set_step(k)
        if k < m:
            lines.append(f"Trainer: Now step {k + 1}: {sim.step_text(k + 1)}")
    lines += ["## Wrapping up", "Trainee: I think I've finished this part.",
              f"Trainer: Let me check: all {m} steps of this part are done, so the task is complete. "
              "How was the experience in the headset? Any feedback for us?",
              f"Trainee: {rng.choice(['It was clear, thanks.', 'The tools helped a lot.', 'A bit fiddly, but fine.'])}",
              "Trainer: Thanks for the feedback!"]
    return "\n".join(lines)


def generate_conversation(chunk: Chunk, rng: random.Random, llm: Any = None, max_attempts: int = 3,
                          context_tokens: int = 16385, temperature: float = 0.7,
                          max_tokens: int = 1024) -> tuple[Conversation | None, int]:
    """(post-processed conversation, attempts). Regenerated while it mentions no tool; None when every
    attempt failed (the caller drops the chunk's conversation)."""
    responses = simulate_tool_responses(chunk, rng)
    for attempt in range(1, max_attempts + 1):
        if llm is None:
            raw = template_dialogue(chunk, rng)
        else:
            raw = llm.chat(llm_messages(chunk, responses, max_chunk_words(context_tokens)), temperature=temperature,
                           max_tokens=max_tokens, seed=rng.randrange(1 << 30))
        conv = postprocess(raw, chunk.text(), chunk.entities(), chunk.vlm_pairs(), chunk.manual_id, chunk.index)
        if any(tools_mentioned(t) for _, t in conv.turns):
            return conv, attempt
    return None, max_attempts


def conversation_stats(manuals: list[Manual], convs: list[Conversation]) -> dict:
    trainer = [t for c in convs for w, t in c.turns if w == "Trainer"]
    trainee = [t for c in convs for w, t in c.turns if w == "Trainee"]
    by_tool = {n: 0 for n in TOOL_NAMES}
    for c in convs:
        for _, t in c.turns:
            for n in tools_mentioned(t):
                by_tool[n] += 1
    n_steps = sum(m.n_steps for m in manuals)
    return {"manuals": len(manuals), "steps": n_steps, "steps_per_manual": n_steps / max(1, len(manuals)),
            "conversations": len(convs),
            "with_tool_calls": sum(any(tools_mentioned(t) for _, t in c.turns) for c in convs),
            "utterances_trainer": len(trainer), "utterances_trainee": len(trainee),
            "mean_words_trainer": sum(len(t.split()) for t in trainer) / max(1, len(trainer)),
            "mean_words_trainee": sum(len(t.split()) for t in trainee) / max(1, len(trainee)),
            "vqa_pairs": sum(len(c.vlm) for c in convs), "tool_mentions": sum(by_tool.values()),
            "tool_mentions_by_tool": dict(sorted(by_tool.items(), key=lambda kv: -kv[1]))}


def lego_synthetic(seed: int = 0, n_manuals: int = 65, steps_per_manual: int = 40, convs_per_chunk: int = 1,
                   out_dir: str | Path | None = None, llm: Any = None, chunk_size: int = 10) -> dict:
    """The synthetic LEGO-MRTA release: manuals, four-section conversations, VQA pairs, v1/v2 exports.

    Returns {"manuals", "conversations", "v1": {train, validation, test}, "v2": {train, test}, "vqa",
    "stats", "dropped"}; with out_dir, also writes them in the published layouts."""
    rng = random.Random(seed)
    manuals = generate_manuals(seed, n_manuals, steps_per_manual)
    convs, dropped = [], 0
    for m in manuals:
        for chunk in chunk_manual(m, chunk_size):
            for _ in range(convs_per_chunk):
                conv, _ = generate_conversation(chunk, rng, llm)
                if conv is None:
                    dropped += 1
                else:
                    convs.append(conv)
    vqa = [{"manual_id": m.manual_id, "instruction_id": s.instruction_id, "img_path": s.vlm["img_path"],
            "task_label": s.vlm["task_label"], "query": s.vlm["query"], "answer": s.vlm["MiniGPTv2_output"]}
           for m in manuals for s in m.steps if s.vlm and s.vlm["task_label"] != "None"]
    v1 = split_v1([r for c in convs for r in v1_rows(c)], seed=42)
    v2 = split_v2([r for c in convs for r in v2_rows(c)], seed=42)
    out = {"manuals": manuals, "conversations": convs, "v1": v1, "v2": v2, "vqa": vqa, "dropped": dropped,
           "stats": conversation_stats(manuals, convs)}
    if out_dir is not None:
        write_synthetic(out, out_dir)
    return out


def write_synthetic(data: dict, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    save_manuals(data["manuals"], out / "manuals")
    cdir = out / "conversations"
    cdir.mkdir(parents=True, exist_ok=True)
    for i, c in enumerate(data["conversations"]):
        (cdir / f"{c.manual_id}_chunk{c.chunk:03d}_{i:05d}.txt").write_text(c.to_text())
    for split, rows in data["v1"].items():
        write_rows(rows, out / "v1" / f"{split}.jsonl")
    for split, rows in data["v2"].items():
        write_rows(rows, out / "v2" / f"{split}.jsonl")
    write_rows(data["vqa"], out / "vqa.jsonl")
    (out / "stats.json").write_text(json.dumps(data["stats"], indent=1))
    return out
