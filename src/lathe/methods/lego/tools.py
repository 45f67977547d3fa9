"""The 18 XR tools of the LEGO assistant: exact names, canonical JSON schemas, argument checks.

Names are case-sensitive and match the reference Unity app. Arguments follow the platform's
canonical schema (spec section 4.1); `validate_args` is the one place they are checked, and a
bad argument becomes a `ToolArgError` whose message the agent shows the model as an observation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DIRECTIONS = ("Up", "Down", "Left", "Right", "None")
WRAPPER = "Called the Unity tool {name} and got a response: {text}"


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict = field(default_factory=lambda: {"type": "object", "properties": {}, "required": [],
                                                      "additionalProperties": False})
    vision: bool = False  # an AR tool answered by the vision back end

    def schema(self) -> dict:
        """OpenAI-style function schema (what chat templates with tool support expect)."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


def _obj(props: dict, required: list[str] = ()) -> dict:
    return {"type": "object", "properties": props, "required": list(required), "additionalProperties": False}


_STAMPS = {"type": "array", "items": {"type": "number"},
           "description": "timestamps (s) of uploaded headset frames to look at; default: the latest"}

TOOLS: tuple[Tool, ...] = (
    Tool("StartAssemble", "Start the assembly at step 1 of the manual."),
    Tool("NextStep", "Advance the XR scene to the next assembly step."),
    Tool("FrontStep", "Go back to the previous assembly step."),
    Tool("Explode", "Show the model in an exploded view, pieces pulled apart."),
    Tool("Recover", "Undo the exploded view and show the model assembled again."),
    Tool("FinishedVideo", "End the assembly and play a video of the finished model."),
    Tool("ReShow", "Replay the animation of the current step."),
    Tool("Enlarge", "Zoom in so the current object looks bigger."),
    Tool("Shrink", "Zoom out so the current object looks smaller."),
    Tool("GoToStep", "Jump straight to a given step number.",
         _obj({"step": {"type": "integer", "minimum": 1, "description": "the step to show, 1..n_steps"}},
              ["step"])),
    Tool("Rotate", "Rotate the current object in the given direction.",
         _obj({"direction": {"type": "string", "enum": list(DIRECTIONS), "description": "which way to turn it"}},
              ["direction"])),
    Tool("ShowPieces", "Show the candidate pieces for the current step, optionally one named piece.",
         _obj({"piece_name": {"type": "string", "description": "a piece such as 'brick 2x4'"}})),
    Tool("HighlightCorrectComponents", "Highlight the correct pieces and their attachment points."),
    Tool("GetCurrentStep", "Report the current step number."),
    Tool("GetRemainingStep", "Report how many steps remain."),
    Tool("CheckStepStatusVR", "Check whether the assembly in the XR scene matches the manual so far."),
    Tool("APICallObjectRecognitionAR", "Find and highlight the needed pieces in the headset camera view.",
         _obj({"current_stamps": _STAMPS}), vision=True),
    Tool("APICallCheckStepStatusAR", "Judge from the headset camera view whether the current step was done "
                                     "correctly.", _obj({"current_stamps": _STAMPS}), vision=True),
)

TOOL_NAMES: tuple[str, ...] = tuple(t.name for t in TOOLS)
BY_NAME: dict[str, Tool] = {t.name: t for t in TOOLS}


class ToolArgError(ValueError):
    """Invalid tool name or arguments; the message is shown to the model as the observation."""


def wrap(name: str, text: str) -> str:
    """The observation string the LLM sees (and the training data uses)."""
    return WRAPPER.format(name=name, text=text)


def _check(value, schema: dict, key: str):
    t = schema.get("type")
    if t == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ToolArgError(f"{key}: expected an integer (got {value!r})")
        if "minimum" in schema and value < schema["minimum"]:
            raise ToolArgError(f"{key}: must be at least {schema['minimum']} (got {value})")
    elif t == "string":
        if not isinstance(value, str):
            raise ToolArgError(f"{key}: expected a string (got {value!r})")
        if "enum" in schema and value not in schema["enum"]:
            raise ToolArgError(f"{key}: must be one of {', '.join(schema['enum'])} (got {value!r})")
    elif t == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ToolArgError(f"{key}: expected a number (got {value!r})")
    elif t == "array":
        if not isinstance(value, list):
            raise ToolArgError(f"{key}: expected a list (got {value!r})")
        value = [_check(v, schema.get("items", {}), f"{key}[{i}]") for i, v in enumerate(value)]
    return value


def validate_args(name: str, args) -> dict:
    """Canonical arguments for tool `name`, or ToolArgError naming the tool and the argument."""
    tool = BY_NAME.get(name)
    if tool is None:
        raise ToolArgError(f"unknown tool {name!r}; the tools are: {', '.join(TOOL_NAMES)}")
    if args is None or args == "":
        args = {}
    if not isinstance(args, dict):
        raise ToolArgError(f"{name}: arguments must be a JSON object (got {args!r})")
    props, required = tool.parameters["properties"], tool.parameters["required"]
    extra = sorted(set(args) - set(props))
    if extra:
        known = ", ".join(props) or "none"
        raise ToolArgError(f"{name}: unknown argument(s) {', '.join(extra)} (accepted: {known})")
    missing = [k for k in required if k not in args]
    if missing:
        raise ToolArgError(f"{name}: missing required argument(s) {', '.join(missing)}")
    return {k: _check(v, props[k], f"{name}.{k}") for k, v in args.items()}


def schemas() -> list[dict]:
    return [t.schema() for t in TOOLS]


def describe_tools() -> str:
    """One line per tool for a text prompt: name(args): description."""
    lines = []
    for t in TOOLS:
        props = t.parameters["properties"]
        sig = ", ".join(f"{k}: {v.get('type')}" + (f" in {v['enum']}" if "enum" in v else "")
                        + ("" if k in t.parameters["required"] else "?") for k, v in props.items())
        lines.append(f"- {t.name}({sig}): {t.description}")
    return "\n".join(lines)


_MENTION = {n: __import__("re").compile(rf"(?<![A-Za-z0-9_]){n}(?![A-Za-z0-9_])") for n in TOOL_NAMES}


def tools_mentioned(text: str) -> set[str]:
    """The tool names mentioned in text: exact, case-sensitive, at word boundaries (so `NextStep(`
    and `"NextStep"` count, `NextSteps` does not)."""
    return {n for n, pat in _MENTION.items() if pat.search(text)}
