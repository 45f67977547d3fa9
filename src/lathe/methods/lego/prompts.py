"""The cerebral agent's prompt text (platform wording of spec section 6) and message layout."""

from __future__ import annotations

import json

from lathe.methods.lego.tools import TOOL_NAMES, describe_tools, schemas

SYSTEM = (
    "You are the trainer of a LEGO assembly training app. The user is a trainee wearing a HoloLens 2 "
    "headset who sees the XR scene live. You can call the Unity functions of the LEGO app, and you can read "
    "the headset's sensor and streaming data through the AR tools. Your goal is to answer the trainee's "
    "questions and guide them through the assembly in XR. Refuse requests that have nothing to do with the "
    "LEGO assembly, and avoid overconfident claims."
)
OPEN_MODEL_EXTRA = ' When you are not sure, say "I don\'t know".'

REACT_FORMAT = (
    'Reply with exactly one JSON object: {"action": <one tool name or "Final Answer">, "action_input": '
    '<the tool\'s arguments as an object, or your answer to the trainee as text>}. Call one tool per reply; '
    "its response comes back as an Observation. Tools: " + ", ".join(TOOL_NAMES) + "."
)
FUNCTION_FORMAT = (
    'To call a tool, reply with <tool_call>{"name": <tool name>, "arguments": <object>}</tool_call>. '
    "Its result comes back as a tool message. When no tool is needed, reply to the trainee in plain text."
)

EXAMPLES_REACT = [
    ("Let's begin.", [("StartAssemble", {}, "The assembly has started at step 1 of 10.")],
     "We are at step 1. Find the base plate and lay it down."),
    ("Can you show me the model from the left?", [("Rotate", {"direction": "Left"}, "Rotated the object Left.")],
     "I turned the model to the left. Can you see the side now?"),
    ("What's the weather tomorrow?", [], "I can only help with the LEGO assembly. Shall we go on with this step?"),
]

RETRY = ("Your reply could not be parsed: {error}. Reply again with exactly one JSON object "
         '{{"action": ..., "action_input": ...}}.')
LAST_CALL = 'You have used every tool call for this turn. Reply now with {"action": "Final Answer", ...}.'


def examples_text() -> str:
    lines = ["Examples:"]
    for user, calls, answer in EXAMPLES_REACT:
        lines.append(f"Trainee: {user}")
        for name, args, obs in calls:
            lines.append(json.dumps({"action": name, "action_input": args}))
            lines.append(f"Observation: Called the Unity tool {name} and got a response: {obs}")
        lines.append(json.dumps({"action": "Final Answer", "action_input": answer}))
    return "\n".join(lines)


def system_message(mode: str, manual_context: str, open_model: bool, few_shot: bool, style: str) -> str:
    """style 'full': everything the spec lists; 'compact': the system prompt and output format only
    (for small context windows, e.g. a tiny model fine-tuned on the agent's own format)."""
    parts = [SYSTEM + (OPEN_MODEL_EXTRA if open_model else "")]
    if mode == "react_json":
        parts.append(REACT_FORMAT)
        if style == "full":
            parts.append("The tools:\n" + describe_tools())
    else:
        parts.append(FUNCTION_FORMAT)
        parts.append("Available tools (JSON schema):\n" + json.dumps(schemas()))
    if manual_context:
        parts.append(manual_context)
    if few_shot and style == "full":
        parts.append(examples_text())
    return "\n\n".join(parts)
