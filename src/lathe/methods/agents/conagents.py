"""ConAgents: grounding (M_G), execution (M_E), observing (M_O) and review (M_R) agents over REST
tools, plus the single-agent ReAct baseline. Spec: shared/specs/agents.md section 3.

Every agent speaks through the one LLM client (`llm.py`); the tool server is any
`send(method, url, params) -> Response(status, body)` (the in-process `ToolSandbox.request`, the
sandbox Serve app through a handle, or HTTP on loopback). Each LLM call is tagged with its role,
so the client's log doubles as distillation data.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from lathe.data.restbench import ToolDoc, path_matches, split_call, template_key, url_path
from lathe.methods.agents.interpreter import run_code
from lathe.methods.agents.llm import ChatLLM, LLMError

EMPTY_OBSERVATION = "the request succeeded but the resource is empty"


@dataclass
class ConAgentsConfig:
    max_steps: int = 5
    protocol: Literal["automatic", "adaptive", "both"] = "both"
    alpha_turns: int = 3  # review feedback rounds per emitted step / request (automatic)
    beta_turns: int = 3  # revisions on environment feedback: server errors, exceptions (adaptive)
    exec_retries: int = 3  # attempts to produce a valid, successful request
    grounding_retries: int = 4
    code_attempts: int = 3
    code_temperature: float = 0.5
    long_response_tokens: int = 1500
    response_chars: int = 1500
    observation_words: int = 1000
    temperature: float = 0.0
    max_tokens: int = 1000
    review_llm: bool = True
    interpreter_timeout_s: float = 5.0
    interpreter_memory_mb: int = 512
    max_wall_s: float | None = None
    seed: int | None = 0
    prompt_style: Literal["full", "compact"] = "full"  # compact: no worked examples or long docs (small students)

    @property
    def automatic(self) -> bool:
        return self.protocol in ("automatic", "both")

    @property
    def adaptive(self) -> bool:
        return self.protocol in ("adaptive", "both")


class StepBudgetError(RuntimeError):
    """The wall-time budget of a run ran out."""


class ToolFatal(RuntimeError):
    """A tool call that must end the run (it hung past its timeout, or the tool server crashed)
    instead of becoming feedback for a retry."""


def count_tokens(text: str) -> int:
    """A tokenizer-free estimate (words and punctuation marks); pass a tokenizer's count to be exact."""
    return len(re.findall(r"\w+|[^\w\s]", text))


# --------------------------------------------------------------------------------------------
# Prompts (platform wording)

GROUNDING_SYSTEM = """You solve a user's request by calling REST tools, one step at a time, in a cycle:
Thought: what to do next, as one specific instruction
API Selection: the METHOD and URL of exactly one candidate tool
Execution Result: (filled in for you; never write it yourself)
Rules: write each step on one line; use no pronouns, name things; carry concrete ids forward, e.g. "(1032)";
mark key values with **; when the request is solved, end with a line "Final Answer: <answer>"."""

GROUNDING_EXAMPLES = {
    "tmdb": """Example
Query: Who directed the movie The Quiet Harbor?
Thought: search for the movie **The Quiet Harbor** to get its id
API Selection: GET https://api.themoviedb.org/3/search/movie
Executed Result: the id of the movie The Quiet Harbor is **(612)**
Thought: get the credits of the movie (612) and find the crew member whose job is Director
API Selection: GET https://api.themoviedb.org/3/movie/{movie_id}/credits
Executed Result: the director of the movie (612) is **Lona Vy**
Final Answer: Lona Vy""",
    "spotify": """Example
Query: What is the most popular track by Orevy?
Thought: search for the artist **Orevy** to get its id
API Selection: GET https://api.spotify.com/v1/search
Executed Result: the id of the artist Orevy is **(ar0f00d1)**
Thought: get the top tracks of the artist (ar0f00d1) and take the first one
API Selection: GET https://api.spotify.com/v1/artists/{id}/top-tracks
Executed Result: the most popular track of the artist (ar0f00d1) is **Wild Echo 3**
Final Answer: Wild Echo 3""",
}


def candidate_block(tools: list[ToolDoc]) -> str:
    return "\n".join(f"[{i}] {t.call}\n    {t.description}" for i, t in enumerate(tools, 1))


def grounding_messages(query: str, tools: list[ToolDoc], transcript: str, domain: str = "",
                       feedback: str | None = None, compact: bool = False) -> list[dict]:
    if compact:
        user = f"Candidate tools: {len(tools)}\nQuery: {query}\n{transcript}"
        msgs = [{"role": "user", "content": user}]
    else:
        ex = GROUNDING_EXAMPLES.get(domain) or "\n\n".join(GROUNDING_EXAMPLES.values())
        user = f"{ex}\n\nCandidate tools:\n{candidate_block(tools)}\n\nQuery: {query}\n{transcript}"
        msgs = [{"role": "system", "content": GROUNDING_SYSTEM}, {"role": "user", "content": user}]
    if feedback:
        msgs.append({"role": "user", "content": f"Revise the last step. Reviewer feedback: {feedback}\n{transcript}"})
    return msgs


def render_doc(t: ToolDoc) -> str:
    lines = [f"URL: {t.call}", f"Description: {t.description}", "Parameters:"]
    for p in t.para or []:
        typ = (p.get("schema") or {}).get("type", "string")
        req = "required" if p.get("required") else "optional"
        lines.append(f"  - {p.get('name')} ({typ}, in {p.get('in', 'query')}, {req}): {p.get('description', '')}")
    if not t.para:
        lines.append("  (none)")
    if t.usage:
        lines.append(f"Usage: {t.usage}")
    if t.result:
        lines.append(f"Example result: {json.dumps(t.result)[:800] if not isinstance(t.result, str) else t.result[:800]}")
    return "\n".join(lines)


def execution_messages(background: str, thought: str, tool: ToolDoc, feedback: list[str],
                       compact: bool = False) -> list[dict]:
    if compact:
        user = f"Tool documentation: {tool.call}\nBackground: {background}\nInstruction: {thought}\nJSON:"
        if feedback:
            user += " (previous attempt failed: " + feedback[-1][:200] + ")"
        return [{"role": "user", "content": user}]
    user = (f"Tool documentation:\n{render_doc(tool)}\n\nBackground: {background}\nInstruction: {thought}\n\n"
            "Write the HTTP request for the instruction as JSON: {\"url\": <the full URL with every {variable} "
            "filled from the background>, \"params\": {<query parameters>}, \"output_instructions\": <what the "
            "reader of the response must extract, in detail>, \"description\": <one line>}.")
    if feedback:
        user += "\n\nPrevious attempts failed:\n" + "\n".join(f"- {f}" for f in feedback) + "\nFix the request."
    return [{"role": "user", "content": user}]


def observing_messages(request: dict, response_text: str, instructions: str) -> list[dict]:
    user = (f"Extract the requested values from an API response.\nRequest: {json.dumps(request)}\n"
            f"Output instructions: {instructions}\nResponse: {response_text}\n\n"
            "Answer in one line. Prefer ids over names where both are given (write ids in parentheses, e.g. "
            "(1032)); if the response is an error, summarise the error.")
    return [{"role": "user", "content": user}]


def code_messages(request: dict, schema: str, instructions: str, feedback: str | None,
                  compact: bool = False) -> list[dict]:
    if compact:
        return [{"role": "user", "content": f"Write Python code for {request.get('url', '')}\nOutput instructions: "
                                            f"{instructions}" + (f"\nFailed: {feedback[:200]}" if feedback else "")}]
    user = (f"Write Python code that reads the variable `response` (already loaded, a parsed JSON value) and "
            f"prints one sentence answering the output instructions.\nRequest: {json.dumps(request)}\n"
            f"Output instructions: {instructions}\nSchema of response:\n{schema}\n"
            "Filter items by the condition asked for; for a superlative take the first item of a sorted list; do not "
            "use f-strings; only json, re, math and collections may be imported. Reply with the code only.")
    if feedback:
        user += f"\nThe previous code failed: {feedback}"
    return [{"role": "user", "content": user}]


def review_messages(kind: str, query: str, content: str, tools: list[ToolDoc]) -> list[dict]:
    user = (f"Review the {kind} of a tool-using agent.\nQuery: {query}\nCandidate tools:\n"
            + "\n".join(t.call for t in tools) + f"\n{kind.capitalize()}: {content}\n\n"
            "Check that it is specific, uses an existing candidate tool, references concrete values (ids) and "
            "leaves no placeholders. Reply as JSON {\"pass\": true|false, \"feedback\": \"<what to fix>\"}.")
    return [{"role": "user", "content": user}]


def schema_outline(value: Any, name: str = "response", depth: int = 0, out: list | None = None) -> str:
    """Recursive `name: type` lines; a list shows only its first element."""
    out = [] if out is None else out
    pad = "  " * depth
    if isinstance(value, dict):
        out.append(f"{pad}{name}: dict")
        for k, v in value.items():
            schema_outline(v, k, depth + 1, out)
    elif isinstance(value, list):
        out.append(f"{pad}{name}: list[{len(value)}]")
        if value:
            schema_outline(value[0], f"{name}[0]", depth + 1, out)
    else:
        out.append(f"{pad}{name}: {type(value).__name__}")
    return "\n".join(out) if depth == 0 else ""


def _one_line(text: str, words: int) -> str:
    s = " ".join(str(text).split())
    w = s.split(" ")
    return " ".join(w[:words])


def _extract_code(text: str) -> str:
    m = re.search(r"```(?:python)?\n(.*?)```", text, re.S)
    return (m.group(1) if m else text).strip()


# --------------------------------------------------------------------------------------------
# Parsing the grounding agent


def parse_grounding(text: str) -> tuple[str, str | None, str | None]:
    """(kind, thought, value): ('final', None, answer) | ('step', thought, tool) | ('none', None, None)."""
    m = re.search(r"final\s*answer\s*:?", text, re.I)
    if m:
        return "final", None, text[m.end():].strip().splitlines()[0].strip() if text[m.end():].strip() else ""
    if "API Selection:" in text:
        before, after = text.split("API Selection:", 1)
        thought = before.strip()
        thought = re.sub(r"^\s*Thought:\s*", "", thought).strip()
        tool = after.strip().splitlines()[0].strip() if after.strip() else ""
        return "step", thought, tool
    return "none", None, None


def resolve_tool(text: str, tools: list[ToolDoc], llm: ChatLLM | None = None, cfg: ConAgentsConfig | None = None,
                 ) -> tuple[ToolDoc | None, str]:
    """(tool, how): exact URL match, else an LLM pick among the candidates, else path-token overlap."""
    s = text.strip()
    m = re.match(r"^\[?(\d+)\]?\s*(.*)$", s)
    if m and m.group(2):
        s = m.group(2)
    method = None
    try:
        method, url = split_call(s)
    except ValueError:
        url = s
    if url:
        key = template_key(url_path(url))
        for t in tools:
            if (method is None or t.method == method) and template_key(t.path) == key:
                return t, "exact"
    if llm is not None and tools:
        msgs = [{"role": "user", "content": f"Which candidate tool is meant by {text!r}?\n{candidate_block(tools)}\n"
                                            "Answer with the number of the closest candidate only."}]
        try:
            out = llm.chat(msgs, temperature=0.0, max_tokens=8, tag="execution")
            n = re.search(r"\d+", out)
            if n and 1 <= int(n.group()) <= len(tools):
                return tools[int(n.group()) - 1], "llm"
        except LLMError:
            pass
    words = set(re.findall(r"[a-z]+", url.lower() if url else s.lower())) - {"https", "http", "api", "com", "org"}
    if not tools or not words:
        return None, "none"
    best = max(tools, key=lambda t: (len(words & set(re.findall(r"[a-z]+", t.path.lower()))), -len(t.path)))
    if not words & set(re.findall(r"[a-z]+", best.path.lower())):
        return None, "none"
    return best, "overlap"


# --------------------------------------------------------------------------------------------
# The loop


Send = Callable[[str, str, dict], Any]  # (method, url, params) -> Response(status, body)


@dataclass
class Step:
    thought: str
    tool: str
    request: dict | None = None
    status: int | None = None
    observation: str = ""
    exec_failed: bool = False
    attempts: int = 0
    feedback: list[str] = field(default_factory=list)
    reviews: list[dict] = field(default_factory=list)
    code_path: bool = False
    tool_resolution: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict:
        return dict(self.__dict__)


class ConAgents:
    def __init__(self, llm: ChatLLM | dict[str, ChatLLM], tools: list[ToolDoc], send: Send,
                 cfg: ConAgentsConfig | None = None, domain: str = "",
                 count: Callable[[str], int] = count_tokens, on_step: Callable[[dict], None] | None = None):
        roles = ("grounding", "execution", "observing", "review")
        self.llms = llm if isinstance(llm, dict) else {r: llm for r in roles}
        missing = [r for r in roles if r not in self.llms]
        if missing:
            raise ValueError(f"llm: no model for role(s) {', '.join(missing)}")
        self.tools, self.send, self.cfg, self.domain = tools, send, cfg or ConAgentsConfig(), domain
        self.count, self.on_step = count, on_step
        self.calls: list[dict] = []  # every request sent: {method, url, template, status}

    def _chat(self, role: str, msgs, **kw) -> str:
        kw.setdefault("temperature", self.cfg.temperature)
        kw.setdefault("max_tokens", self.cfg.max_tokens)
        kw.setdefault("seed", self.cfg.seed)
        return self.llms[role].chat(msgs, tag=role, **kw)

    def _deadline_check(self, t0: float) -> None:
        if self.cfg.max_wall_s is not None and time.perf_counter() - t0 > self.cfg.max_wall_s:
            raise StepBudgetError(f"the run exceeded its wall-time budget of {self.cfg.max_wall_s:g} s")

    # -- M_G
    def ground(self, query: str, transcript: str, feedback: str | None = None) -> tuple[str, str | None, str | None]:
        compact = self.cfg.prompt_style == "compact"
        msgs = grounding_messages(query, self.tools, transcript, self.domain, feedback, compact)
        stop = ["Execution Result", "Executed Result"]
        first = ""
        for _ in range(self.cfg.grounding_retries):
            out = self._chat("grounding", msgs, stop=stop)
            first = first or next((ln.strip() for ln in out.splitlines() if ln.strip()), "")
            kind, thought, value = parse_grounding(out)
            if kind != "none":
                return kind, thought, value
        # forced continuation: keep the first line as the thought and ask for the tool alone
        thought = re.sub(r"^\s*Thought:\s*", "", first).strip() or "call the next tool"
        forced = grounding_messages(query, self.tools, transcript + thought + "\nAPI Selection: ", self.domain,
                                    compact=compact)
        forced[-1]["content"] += "\nAnswer with the API Selection (METHOD and URL of one candidate) only."
        tool = self._chat("grounding", forced, stop=["Thought: "]).strip().splitlines()
        return "step", thought, (tool[0].strip() if tool else "")

    # -- M_R
    def review(self, kind: str, query: str, content: str) -> dict:
        if not self.cfg.review_llm:
            return {"pass": True, "feedback": "", "by": "rules"}
        try:
            out = json.loads(self._chat("review", review_messages(kind, query, content, self.tools), json_mode=True,
                                        max_tokens=200))
            return {"pass": bool(out.get("pass", True)), "feedback": str(out.get("feedback", "")), "by": "llm"}
        except LLMError as e:  # a reviewer that cannot answer does not block the agents
            return {"pass": True, "feedback": f"review unavailable: {e}", "by": "error"}

    # -- M_E
    def execute(self, background: str, step: Step, tool: ToolDoc, query: str) -> tuple[dict | None, Any]:
        feedback: list[str] = []
        env_failures = 0
        reviews_left = self.cfg.alpha_turns if self.cfg.automatic else 0
        request = None
        attempt = 0
        while attempt < self.cfg.exec_retries:
            attempt += 1
            step.attempts = attempt
            try:
                req = json.loads(self._chat("execution", execution_messages(
                    background, step.thought, tool, feedback, self.cfg.prompt_style == "compact"), json_mode=True))
            except LLMError as e:
                feedback.append(f"the request was not valid JSON ({e})")
                continue
            url, params = str(req.get("url", "")), req.get("params") or {}
            if not isinstance(params, dict):
                params = {}
            request = {"url": url, "params": params, "output_instructions": str(req.get("output_instructions", "")),
                       "description": str(req.get("description", ""))}
            problem = self._validate(url, params, tool)
            if problem:
                feedback.append(problem)
                continue
            if reviews_left > 0:
                rv = self.review("request", query, json.dumps({"url": url, "params": params}))
                step.reviews.append({"on": "request"} | rv)
                if not rv["pass"]:
                    reviews_left -= 1
                    feedback.append(f"reviewer: {rv['feedback']}")
                    attempt -= 1  # review rounds are bounded by alpha_turns, not by exec_retries
                    continue
            try:
                resp = self.send(tool.method, url, params)
            except ToolFatal:
                raise
            except Exception as e:  # noqa: BLE001 - any transport failure is feedback for the agent
                self.calls.append({"method": tool.method, "url": url, "template": tool.path, "status": None})
                feedback.append(f"the request raised {type(e).__name__}: {e}")
                env_failures += 1
                if not self.cfg.adaptive or env_failures > self.cfg.beta_turns:
                    break
                continue
            self.calls.append({"method": tool.method, "url": url, "template": tool.path, "status": resp.status})
            step.status = resp.status
            if resp.status in (200, 201, 204):
                step.feedback = feedback
                return request, resp
            body = resp.body if resp.body is not None else ""
            feedback.append(f"the server answered {resp.status}: {json.dumps(body)[:500]}")
            env_failures += 1
            if not self.cfg.adaptive or env_failures > self.cfg.beta_turns:
                break
        step.feedback, step.exec_failed = feedback, True
        return request, None

    def _validate(self, url: str, params: dict, tool: ToolDoc) -> str | None:
        if not url:
            return "the request has no url"
        left = re.findall(r"\{([^}]*)\}", url)
        if left:
            return (f"the url still contains the unfilled path variable(s) {', '.join('{' + v + '}' for v in left)}; "
                    "fill them with concrete values from the background")
        from urllib.parse import urlparse

        host = urlparse(url).hostname
        if host and tool.base_url and host != urlparse(tool.base_url).hostname and \
                host not in ("127.0.0.1", "localhost", "::1"):
            return f"the url's host {host} is not the tool's host {urlparse(tool.base_url).hostname}"
        if not path_matches(tool.path, url_path(url)):
            return f"the url {url} does not match the tool {tool.call}"
        missing = [n for n in tool.required() if params.get(n) in (None, "") and f"{n}=" not in url]
        if missing:
            return f"the required parameter(s) {', '.join(missing)} are missing"
        return None

    # -- M_O
    def observe(self, request: dict, resp, step: Step) -> str:
        if resp is None:
            return _one_line("the request failed: " + (step.feedback[-1] if step.feedback else "unknown error"),
                             self.cfg.observation_words)
        if resp.status == 204 or resp.body is None:
            return EMPTY_OBSERVATION
        text = json.dumps(resp.body)
        instructions = request.get("output_instructions") or step.thought
        if self.count(text) >= self.cfg.long_response_tokens:
            step.code_path = True
            schema = schema_outline(resp.body)
            fb = None
            for _ in range(self.cfg.code_attempts if self.cfg.adaptive else 1):
                try:
                    code = _extract_code(self._chat("observing", code_messages(request, schema, instructions, fb,
                                                                                  self.cfg.prompt_style == "compact"),
                                                    temperature=self.cfg.code_temperature))
                except LLMError as e:
                    step.feedback.append(f"extraction code: {e}")
                    break
                ok, out, err = run_code(code, resp.body, self.cfg.interpreter_timeout_s, self.cfg.interpreter_memory_mb)
                if ok and out.strip() and out.strip() != "None":
                    return _one_line(out, self.cfg.observation_words)
                fb = err or "the code printed nothing"
                step.feedback.append(f"extraction code: {fb}")
        out = self._chat("observing", observing_messages(request, text[: self.cfg.response_chars], instructions))
        return _one_line(out, self.cfg.observation_words)

    # -- the step loop
    def run(self, query: str) -> dict:
        t0 = time.perf_counter()
        background, transcript = query, "Thought: "
        steps: list[Step] = []
        answer, finished, error = None, False, None
        try:
            for _ in range(self.cfg.max_steps):
                self._deadline_check(t0)
                s0 = time.perf_counter()
                kind, thought, value = self.ground(query, transcript)
                if kind == "final":
                    answer, finished = value, True
                    self._emit({"type": "final", "answer": answer})
                    break
                tool, how = resolve_tool(value or "", self.tools, self.llms["execution"], self.cfg)
                rounds = self.cfg.alpha_turns if self.cfg.automatic else 0
                reviews = []
                while rounds > 0:
                    if tool is None:
                        rv = {"pass": False, "feedback": f"{value!r} is not one of the candidate tools", "by": "rules"}
                    else:
                        rv = self.review("step", query, f"Thought: {thought}\nAPI Selection: {tool.call}")
                    reviews.append({"on": "step"} | rv)
                    if rv["pass"]:
                        break
                    rounds -= 1
                    kind, thought, value = self.ground(query, transcript, feedback=rv["feedback"])
                    if kind == "final":
                        break
                    tool, how = resolve_tool(value or "", self.tools, self.llms["execution"], self.cfg)
                if kind == "final":
                    answer, finished = value, True
                    self._emit({"type": "final", "answer": answer})
                    break
                step = Step(thought=thought or "", tool=tool.call if tool else (value or ""), tool_resolution=how,
                            reviews=reviews)
                if tool is None:
                    step.exec_failed = True
                    step.observation = f"no candidate tool matches {value!r}"
                else:
                    request, resp = self.execute(background, step, tool, query)
                    step.request = request
                    step.observation = self.observe(request or {}, resp, step)
                step.seconds = time.perf_counter() - s0
                steps.append(step)
                self._emit({"type": "step", "index": len(steps) - 1} | step.to_json())
                background += " -> " + step.observation
                transcript += (f"{step.thought}\nAPI Selection: {step.tool}\nExecuted Result: {step.observation}\n"
                               "Thought: ")
            else:
                answer = steps[-1].observation if steps else ""
        except StepBudgetError as e:
            error, answer = str(e), (steps[-1].observation if steps else "")
        return {"query": query, "answer": answer, "finished": finished, "steps": [s.to_json() for s in steps],
                "calls": list(self.calls), "error": error, "seconds": time.perf_counter() - t0}

    def _emit(self, event: dict) -> None:
        if self.on_step is not None:
            self.on_step(event)


# --------------------------------------------------------------------------------------------
# Single-agent ReAct baseline

REACT_SYSTEM = """You solve a user's request with REST tools. Repeat:
Thought: <reasoning>
Action: <METHOD and full URL of one tool, path variables filled>
Action Input: <JSON object of query parameters>
and you will be given "Observation: <response>". When done, write "Final Answer: <answer>"."""


def react_run(llm: ChatLLM, tools: list[ToolDoc], send: Send, query: str, max_steps: int = 5,
              response_chars: int = 1500, max_tokens: int = 300, seed: int | None = 0,
              on_step: Callable[[dict], None] | None = None) -> dict:
    docs = "\n\n".join(render_doc(t) for t in tools)
    history = ""
    calls, steps = [], []
    t0 = time.perf_counter()
    for _ in range(max_steps):
        msgs = [{"role": "system", "content": REACT_SYSTEM},
                {"role": "user", "content": f"Tools:\n{docs}\n\nQuery: {query}\n{history}"}]
        out = llm.chat(msgs, stop=["Observation:"], temperature=0.0, max_tokens=max_tokens, seed=seed, tag="react")
        kind, _, ans = parse_grounding(out)
        if kind == "final":
            return {"query": query, "answer": ans, "finished": True, "steps": steps, "calls": calls,
                    "seconds": time.perf_counter() - t0, "error": None}
        m = re.search(r"Action:\s*(.+)", out)
        obs = "no Action found; write an Action line or a Final Answer"
        step = {"thought": out.split("Action:")[0].replace("Thought:", "").strip(), "action": None}
        if m:
            tool, _ = resolve_tool(m.group(1).strip(), tools)
            params = {}
            pm = re.search(r"Action Input:\s*(\{.*\})", out, re.S)
            if pm:
                try:
                    params = json.loads(pm.group(1))
                except json.JSONDecodeError:
                    params = {}
            try:
                method, url = split_call(m.group(1).strip())
            except ValueError:
                method, url = (tool.method if tool else "GET"), m.group(1).strip()
            step["action"] = f"{method} {url}"
            if re.search(r"\{[^}]*\}", url):
                obs = f"the url still contains unfilled path variables: {url}"
            else:
                try:
                    resp = send(method, url, params if isinstance(params, dict) else {})
                except ToolFatal:
                    raise
                except Exception as e:  # noqa: BLE001
                    resp, obs = None, f"the request raised {type(e).__name__}: {e}"
                if resp is not None:
                    calls.append({"method": method, "url": url, "template": tool.path if tool else url_path(url),
                                  "status": resp.status})
                    obs = EMPTY_OBSERVATION if resp.status == 204 else json.dumps(resp.body)[:response_chars]
        step["observation"] = obs
        steps.append(step)
        if on_step:
            on_step({"type": "step", "index": len(steps) - 1} | step)
        history += f"{out.strip()}\nObservation: {obs}\n"
    return {"query": query, "answer": steps[-1]["observation"] if steps else "", "finished": False, "steps": steps,
            "calls": calls, "seconds": time.perf_counter() - t0, "error": None}
