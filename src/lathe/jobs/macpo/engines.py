"""Engine actors: one per agent (and per negative agent), holding its current weights for
generation (vLLM or transformers `generate`) and batched PPL scoring. The driver pushes new
weights with `load(path)` after every round; Ray keeps running.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import ray


def pick_engine(choice: str) -> str:
    """auto -> vLLM only with a CUDA GPU and an importable vllm; on CPU transformers is faster here."""
    if choice != "auto":
        return choice
    import torch

    if not torch.cuda.is_available():
        return "transformers"
    try:
        import vllm  # noqa: F401
    except Exception:
        return "transformers"
    return "vllm"


class Engine:
    """Generation + scoring for one agent. `load` (re)places the weights; nothing restarts."""

    def __init__(self, name: str, engine: str, threads: int = 1, vllm_opts: dict | None = None):
        import torch

        torch.set_num_threads(max(1, threads))
        self.name, self.engine, self.vllm_opts = name, engine, vllm_opts or {}
        self.model = self.tok = self.llm = None
        self.path: str | None = None
        self.loads = 0
        self._merged_dir: str | None = None

    def pid(self) -> int:
        return os.getpid()

    def load(self, path: str) -> dict:
        """Load an agent artifact (full dir or adapter over its source), merged for speed."""
        import torch

        from lathe.jobs.sft import load_artifact
        from lathe.methods.peft import merge_and_unload

        t0 = time.perf_counter()
        model, tok = load_artifact(path)
        if getattr(model, "lathe_peft", None):
            model = merge_and_unload(model)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model, self.tok = model.to(device).eval(), tok
        if self.engine == "vllm":
            self._load_vllm()
        self.path = path
        self.loads += 1
        return {"agent": self.name, "path": path, "loads": self.loads, "load_s": time.perf_counter() - t0}

    def _load_vllm(self) -> None:
        """First load builds the engine from a merged dir; later loads stream the state dict into
        the running workers (no engine restart)."""
        if self.llm is None:
            from vllm import LLM

            from lathe.platform.zoo import save_pretrained

            self._merged_dir = tempfile.mkdtemp(prefix=f"lathe-vllm-{self.name}-")
            save_pretrained(self.model, self.tok, self._merged_dir)
            o = self.vllm_opts
            self.llm = LLM(model=self._merged_dir, dtype=o.get("dtype", "auto"),
                           max_model_len=o.get("max_model_len", 1024), enforce_eager=True, seed=0,
                           gpu_memory_utilization=o.get("gpu_memory_utilization", 0.2))
            return
        weights = [(n, t.detach().cpu()) for n, t in self.model.state_dict().items()]
        self.llm.collective_rpc(_vllm_load_weights, args=(weights,))
        self.llm.reset_prefix_cache()

    def generate(self, prompts: list[str], max_new_tokens: int, temperature: float, top_p: float, seed: int,
                 batch_size: int, max_prompt: int) -> dict:
        t0 = time.perf_counter()
        if self.engine == "vllm":
            from vllm import SamplingParams

            from lathe.methods.alignment.encoding import prompt_ids

            params = SamplingParams(max_tokens=max_new_tokens, temperature=temperature,
                                    top_p=top_p if temperature > 0 else 1.0, seed=seed,
                                    min_tokens=1)
            reqs = [{"prompt_token_ids": prompt_ids(self.tok, p, max_prompt)} for p in prompts]
            outs = self.llm.generate(reqs, params, use_tqdm=False)
            texts = [o.outputs[0].text.strip() for o in outs]
            n = sum(len(o.outputs[0].token_ids) for o in outs)
        else:
            from lathe.methods.alignment.generation import generate

            texts, n = generate(self.model, self.tok, prompts, max_new_tokens, temperature, top_p, seed,
                                batch_size, max_prompt)
        return {"responses": texts, "tokens": n, "seconds": time.perf_counter() - t0, "engine": self.engine}

    def ppl(self, prompts: list[str], responses: list[str], max_prompt: int, max_response: int,
            batch_size: int = 32) -> dict:
        from lathe.methods.alignment.scoring import response_ppl

        t0 = time.perf_counter()
        vals = response_ppl(self.model, self.tok, prompts, responses, max_prompt=max_prompt,
                            max_response=max_response, batch_size=batch_size)
        return {"ppl": vals, "seconds": time.perf_counter() - t0}

    def fingerprint(self) -> str:
        from lathe.methods.alignment.fingerprint import state_fingerprint

        return state_fingerprint(self.model)

    def close(self) -> None:
        if self._merged_dir:
            shutil.rmtree(self._merged_dir, ignore_errors=True)


EngineActor = ray.remote(Engine)


def _vllm_load_weights(worker, weights):
    """Runs inside each vLLM worker: copy the new tensors into the live model."""
    model = worker.model_runner.model
    model.load_weights(weights=iter(weights))
    return True


def placement_group_for(name: str, bundles: int, cpus: float, gpus: float, strategy: str):
    from ray.util.placement_group import placement_group

    spec = [{"CPU": cpus, **({"GPU": gpus} if gpus else {})} for _ in range(bundles)]
    pg = placement_group(spec, strategy=strategy, name=f"macpo-{name}-{os.getpid()}")
    ray.get(pg.ready(), timeout=600)
    return pg


def start_actor(name: str, pg, bundle: int, cfg, engine: str):
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    e = cfg.engines
    opts = {"dtype": e.vllm_dtype, "max_model_len": e.vllm_max_model_len,
            "gpu_memory_utilization": e.vllm_gpu_memory_utilization}
    strategy = PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=bundle)
    return EngineActor.options(num_cpus=e.cpus_per_actor, num_gpus=e.gpus_per_actor or 0,
                               scheduling_strategy=strategy, name=None, max_restarts=0).remote(
        name, engine, max(1, int(e.cpus_per_actor)), opts)


def fingerprint_dir(path: str | Path) -> str:
    from lathe.methods.alignment.fingerprint import state_fingerprint
    from lathe.jobs.sft import load_artifact

    model, _ = load_artifact(path)
    return state_fingerprint(model)
