"""Ray Serve app: ConAgents and GenGround over deployment handles (no HTTP hops in the cluster).

Routes (under the route prefix, default /agents):
  POST /conagents/run    {query, domain?, task_id?, method: conagents|react, max_steps?, protocol?, stream?}
  POST /genground/answer {question, qid?, method: genground|rtr, max_iters?, stream?}
  GET  /healthz
Composition: the LLM deployment (app "llm") and the ToolSandbox (app "sandbox") are looked up by
name; the PassageRetriever (BM25 over the passage corpus) is bound into this app. The agent loop
runs in a worker thread; every tool call has a timeout, every run a step and wall-time budget.
With `stream: true` the reply is server-sent events: one `step` event as each step finishes, then
`result` (or `error`), then `[DONE]`.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Literal

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from lathe.serve.auth import install_guards

STUDENT_APP = "agents-student"  # the LLM app deploy() starts for `llm.kind: student`

api = FastAPI(title="lathe agents", description="ConAgents (tool use) and GenGround (multi-hop QA) on Ray Serve.")
install_guards(api)


class ConAgentsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1, description="the user request")
    domain: Literal["tmdb", "spotify"] | None = None
    task_id: str | None = Field(None, description="a synthetic task's q_id: its candidates (and the oracle's plan)")
    method: Literal["conagents", "react"] = "conagents"
    max_steps: int | None = Field(None, ge=1)
    protocol: Literal["automatic", "adaptive", "both"] | None = None
    stream: bool = False


class GenGroundRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1)
    qid: str | None = Field(None, description="a corpus question id (oracle/simulation retrieval need it)")
    method: Literal["genground", "rtr"] = "genground"
    max_iters: int | None = Field(None, ge=1)
    stream: bool = False


def load_corpus(cfg) -> tuple[list[dict], list[dict]]:
    from lathe.data import multihop as mh

    if cfg.questions:
        rows, passages = mh.load_questions(cfg.questions, cfg.questions_format)
        if cfg.passages:
            passages = mh.load_passages(cfg.passages)
        return rows, passages
    return mh.generate(cfg.corpus_seed)


@serve.deployment(name="PassageRetriever")
class PassageRetriever:
    """BM25 over the passage corpus; `search(query, k)` -> ["Title: ... Text: ..."]."""

    def __init__(self, cfg: dict):
        from lathe.serve.config import AgentsAppConfig

        c = AgentsAppConfig.model_validate(cfg)
        from lathe.data import multihop as mh

        _, passages = load_corpus(c)
        self.index = mh.PassageIndex(passages)
        self.size = len(passages)

    def search(self, query: str, k: int = 10) -> list[str]:
        from lathe.data.multihop import passage_string

        return [passage_string(p) for p in self.index.search(query, k)]

    def healthz(self) -> dict:
        return {"passages": self.size}


# module helpers sit above the deployments: Serve captures a class's globals when it is decorated
def _message(e: Exception) -> str:
    text = str(e).strip()
    return (text.splitlines()[-1] if text else type(e).__name__)[:500]


def _sse(event: dict) -> str:
    return f"data: {json.dumps(event, default=str)}\n\n"


@serve.deployment(name="Agents")
@serve.ingress(api)
class AgentsServer:
    def __init__(self, cfg: dict, passages, token: str | None = None):
        from lathe.serve.config import AgentsAppConfig

        self.cfg = AgentsAppConfig.model_validate(cfg)
        api.state.guard = {"token": token, "max_body_bytes": self.cfg.max_body_bytes}
        self.sandbox = serve.get_deployment_handle("ToolSandbox", app_name="sandbox")
        self.llm_handle = None
        if self.cfg.llm.kind in ("handle", "student"):
            self.llm_handle = serve.get_deployment_handle(
                "LLMServer", app_name="llm" if self.cfg.llm.kind == "handle" else STUDENT_APP)
        self.passages = passages
        self.tools, self.tasks = {}, {}
        self._loaded, self._load_lock = False, asyncio.Lock()
        rows, plist = load_corpus(self.cfg)
        self.questions = {r["qid"]: r for r in rows}
        self.passage_by_id = {p["id"]: p for p in plist}
        self.requests = 0

    async def _ensure_loaded(self) -> None:
        """Tool docs and tasks from the sandbox, awaited on first use (never block in a constructor)."""
        from lathe.data.restbench import Task, tool_from_json

        if self._loaded:
            return
        async with self._load_lock:
            if self._loaded:
                return
            for d in ("tmdb", "spotify"):
                try:
                    docs = await self.sandbox.tools.remote(d)
                except Exception:  # noqa: BLE001 - a domain the sandbox does not serve
                    continue
                self.tools[d] = [tool_from_json(t | {"domain": d}, f"sandbox tool {i}") for i, t in enumerate(docs)]
                rows = await self.sandbox.tasks.remote(d)
                self.tasks[d] = {r["q_id"]: Task(q_id=r["q_id"], query=r["query"], solution=r["solution"],
                                                 answer=r.get("answer"), domain=d, plan=r.get("plan")) for r in rows}
            self._loaded = True

    # -- clients
    def _llm(self, oracle_for=None):
        from lathe.methods.agents.llm import HandleChat, OpenAIChat

        c = self.cfg.llm
        if c.kind == "oracle":
            return oracle_for()
        if c.kind == "openai":
            return OpenAIChat(c.base_url, c.model, c.api_key_env, c.timeout_s, c.allow_remote)
        from lathe.serve.llm_app import ChatRequest

        return HandleChat(self.llm_handle, method="chat", wrap=ChatRequest.model_validate, timeout_s=c.timeout_s)

    def _conagents_cfg(self):
        """The configured ConAgents options; over the student's own (compact prompts) for `kind: student`."""
        from lathe.methods.agents.conagents import ConAgentsConfig
        from lathe.methods.agents.distill import student_config

        if self.cfg.llm.kind == "student":
            return student_config(**self.cfg.conagents)
        return ConAgentsConfig(**self.cfg.conagents)

    def _send(self, domain: str):
        from lathe.data.restbench import Response
        from lathe.methods.agents.conagents import ToolFatal

        timeout = self.cfg.tool_timeout_s

        def send(method: str, url: str, params: dict):
            resp = self.sandbox.call.remote(domain, method, url, params)
            try:
                out = resp.result(timeout_s=timeout)
            except TimeoutError:
                resp.cancel()
                raise ToolFatal(f"tool call {method} {url} did not answer within {timeout:g} s") from None
            except Exception as e:  # noqa: BLE001 - the tool server raised
                msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                raise ToolFatal(f"tool call {method} {url} failed: {msg}") from None
            return Response(out["status"], out["body"])

        return send

    # -- runs
    def _conagents_job(self, req: ConAgentsRequest):
        from dataclasses import replace

        from lathe.data.restbench import candidate_tools
        from lathe.methods.agents.conagents import ConAgents, react_run
        from lathe.methods.agents.oracle import OracleConAgents

        domain = req.domain or self.cfg.domain
        if domain not in self.tools:
            raise HTTPException(422, detail=f"domain: {domain!r} is not served by the sandbox")
        if len(req.query) > self.cfg.max_query_chars:
            raise HTTPException(422, detail=f"query: longer than {self.cfg.max_query_chars} characters")
        task = None
        if req.task_id is not None:
            task = self.tasks[domain].get(req.task_id)
            if task is None:
                raise HTTPException(404, detail=f"task_id: no task {req.task_id!r} in {domain}")
        elif self.cfg.llm.kind == "oracle":
            task = next((t for t in self.tasks[domain].values() if t.query == req.query), None)
            if task is None:
                raise HTTPException(422, detail="llm kind oracle: the query must be a synthetic task (or give task_id)")
        steps = req.max_steps or self._conagents_cfg().max_steps
        if steps > self.cfg.max_steps_limit:
            raise HTTPException(422, detail=f"max_steps: at most {self.cfg.max_steps_limit} (got {steps})")
        tools = self.tools[domain]
        cands = candidate_tools(task, tools, self.cfg.candidates) if task else tools[: self.cfg.candidates]
        send = self._send(domain)
        cfg = replace(self._conagents_cfg(), max_steps=steps, max_wall_s=self.cfg.max_wall_s)
        if req.protocol:
            cfg = replace(cfg, protocol=req.protocol)
        llm = self._llm(lambda: OracleConAgents(task, send))

        def job(on_step):
            if req.method == "react":
                out = react_run(llm, cands, send, req.query, max_steps=steps, on_step=on_step)
            else:
                out = ConAgents(llm, cands, send, cfg, domain=domain, on_step=on_step).run(req.query)
            out["llm_calls"] = len(llm.log)
            out["llm_seconds"] = sum(r.get("latency_s", 0) for r in llm.log)
            if task is not None and task.answer is not None:
                from lathe.eval.agents import auto_success, path_rate

                out["success"] = auto_success(out["answer"], task.answer)
                out["path"] = path_rate(task.solution, out["calls"])
            return out

        return job

    def _genground_job(self, req: GenGroundRequest):
        from dataclasses import replace

        from lathe.data import multihop as mh
        from lathe.methods.agents.genground import GenGround, GenGroundConfig, retrieve_then_read
        from lathe.methods.agents.oracle import OracleGenGround

        row = None
        if req.qid is not None:
            row = self.questions.get(req.qid)
            if row is None:
                raise HTTPException(404, detail=f"qid: no question {req.qid!r} in the corpus")
        elif self.cfg.llm.kind == "oracle" or self.cfg.knowledge_mode != "index":
            row = next((r for r in self.questions.values() if r["question"] == req.question), None)
            if row is None:
                raise HTTPException(422, detail="qid: needed for oracle/simulation retrieval or the oracle teacher")
        if len(req.question) > self.cfg.max_query_chars:
            raise HTTPException(422, detail=f"question: longer than {self.cfg.max_query_chars} characters")
        iters = req.max_iters or GenGroundConfig(**self.cfg.genground).max_iters
        if iters > self.cfg.max_steps_limit:
            raise HTTPException(422, detail=f"max_iters: at most {self.cfg.max_steps_limit} (got {iters})")
        cfg = replace(GenGroundConfig(**self.cfg.genground), max_iters=iters, max_wall_s=self.cfg.max_wall_s)
        timeout = self.cfg.tool_timeout_s

        if self.cfg.knowledge_mode == "index":
            def retrieve(q: str, k: int) -> list[str]:
                try:
                    return self.passages.search.remote(q, k).result(timeout_s=timeout)
                except TimeoutError:
                    from lathe.methods.agents.conagents import ToolFatal

                    raise ToolFatal(f"the passage retriever did not answer within {timeout:g} s") from None
        else:
            retrieve = mh.Knowledge(list(self.passage_by_id.values()), self.cfg.knowledge_mode).for_question(row)
        llm = self._llm(lambda: OracleGenGround(row, self.passage_by_id))

        def job(on_step):
            if req.method == "rtr":
                out = retrieve_then_read(llm, retrieve, req.question, cfg.n_docs)
            else:
                out = GenGround(llm, retrieve, cfg, on_step=on_step).answer(req.question)
            out["llm_calls"] = len(llm.log)
            if row is not None:
                from lathe.eval.agents import cover_em, f1_score

                out["acc"], out["f1"] = cover_em(out["answer"], row["answers"]), f1_score(out["answer"], row["answers"])
            return out

        return job

    async def _respond(self, job, stream: bool):
        self.requests += 1
        budget = self.cfg.max_wall_s + self.cfg.tool_timeout_s + self.cfg.llm.timeout_s
        if not stream:
            try:
                out = await asyncio.wait_for(asyncio.to_thread(job, None), timeout=budget)
            except asyncio.TimeoutError:
                return JSONResponse({"error": f"the run exceeded {budget:g} s"}, status_code=504)
            except Exception as e:  # noqa: BLE001 - a failed run is one clear error, the app keeps serving
                return JSONResponse({"error": _message(e)}, status_code=502)
            return out
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def on_step(event: dict) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, ("event", event))

        def run():
            try:
                loop.call_soon_threadsafe(queue.put_nowait, ("result", job(on_step)))
            except Exception as e:  # noqa: BLE001
                loop.call_soon_threadsafe(queue.put_nowait, ("error", _message(e)))

        async def events():
            fut = asyncio.ensure_future(asyncio.to_thread(run))
            deadline = time.monotonic() + budget
            try:
                while True:
                    try:
                        kind, item = await asyncio.wait_for(queue.get(), timeout=max(0.01, deadline - time.monotonic()))
                    except asyncio.TimeoutError:
                        yield _sse({"type": "error", "error": f"the run exceeded {budget:g} s"})
                        break
                    if kind == "event":
                        yield _sse(item)
                        continue
                    yield _sse({"type": kind, **(item if kind == "result" else {"error": item})})
                    break
                yield "data: [DONE]\n\n"
            finally:
                fut.cancel()

        return StreamingResponse(events(), media_type="text/event-stream", headers={"cache-control": "no-cache"})

    @api.get("/healthz")
    async def healthz(self) -> dict:
        await self._ensure_loaded()
        return {"status": "ok", "llm": self.cfg.llm.kind, "domains": sorted(self.tools),
                "tasks": {d: len(t) for d, t in self.tasks.items()}, "questions": len(self.questions),
                "knowledge_mode": self.cfg.knowledge_mode, "requests": self.requests}

    @api.post("/conagents/run")
    async def conagents(self, req: ConAgentsRequest):
        await self._ensure_loaded()
        return await self._respond(self._conagents_job(req), req.stream)

    @api.post("/genground/answer")
    async def genground(self, req: GenGroundRequest):
        return await self._respond(self._genground_job(req), req.stream)


def build_app(cfg, token: str | None = None):
    rep = cfg.replicas
    passages = PassageRetriever.options(ray_actor_options={"num_cpus": 0.25}).bind(cfg.model_dump())
    return AgentsServer.options(num_replicas=rep.num_replicas, max_ongoing_requests=rep.max_ongoing_requests,
                                ray_actor_options={"num_cpus": rep.num_cpus}).bind(cfg.model_dump(), passages, token)
