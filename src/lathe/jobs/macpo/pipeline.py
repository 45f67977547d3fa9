"""`macpo` job: weak-to-strong multi-agent contrastive preference optimisation (spec §4).

K weak teachers and one strong student; each agent (and, for step 3, its negative agent) is
an engine actor in the agent's own placement group. Generation and PPL scoring run on those
actors; every SFT and DPO update is a run of the one training loop (`run_training`, Ray Train).
After each round the new weights are pushed into the live actors. Every step is recorded in
`macpo/manifest.json`; running again in the same run dir (`lathe run ... --resume RUN_DIR`)
skips every finished step.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lathe.data import preference as P
from lathe.jobs.base import Job, Reporter
from lathe.jobs.dpo import DPOTask
from lathe.jobs.macpo.config import MacpoConfig
from lathe.jobs.macpo.manifest import Manifest
from lathe.jobs.preference_data import load_splits
from lathe.jobs.trainer import run_training
from lathe.methods.alignment import macpo as M
from lathe.platform.errors import LatheError
from lathe.platform.registry import lookup, register
from lathe.platform.runstore import RunDir
from lathe.platform.zoo import ModelSource, resolve_source


def _params_of(model_cfg) -> int:
    """Parameter count without materialising weights (meta device)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from lathe.platform.zoo import preset_config

    from lathe.platform.pretrained import PRETRAINED, pretrained_dir

    if model_cfg.preset in PRETRAINED:  # e.g. smollm2-135m-instruct (converted once, then cached)
        hf = AutoConfig.from_pretrained(pretrained_dir(model_cfg.preset), local_files_only=True)
    elif model_cfg.path:
        hf = AutoConfig.from_pretrained(model_cfg.path, local_files_only=True)
    else:
        hf = preset_config(model_cfg.preset, None, model_cfg.architecture, **model_cfg.config_overrides)
    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(hf)
    return sum(p.numel() for p in m.parameters())


class MacpoRun:
    def __init__(self, cfg: MacpoConfig, run: RunDir, show: bool):
        self.cfg, self.run, self.show = cfg, run, show
        self.root = run.path / "macpo"
        self.root.mkdir(parents=True, exist_ok=True)
        self.man = Manifest(self.root / "manifest.json")
        self.names = cfg.agent_names()
        self.K = len(cfg.teachers)
        self.student = self.K
        self.specs = cfg.agents()
        self.actors: dict[int, Any] = {}
        self.neg_actors: dict[int, Any] = {}
        self.pgs: dict[int, Any] = {}
        self.current: dict[int, str] = {}
        self.timing: dict[int, dict[str, float]] = {}
        self.reporter = Reporter(run, desc="macpo", show=False)

    # --- helpers -----------------------------------------------------------------------
    def write_json(self, rel: str, obj: Any) -> str:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj, indent=1))
        return str(path)

    def read_json(self, path: str) -> Any:
        return json.loads(Path(path).read_text())

    def before_step(self, name: str) -> None:
        target = self.cfg.testing.kill_actor_at
        marker = self.root / ".actor_killed"
        if target == name and not marker.exists():
            import ray

            marker.touch()
            a = self.names.index(name.rsplit("/", 1)[-1])
            ray.kill(self.actor(a), no_restart=True)

    def tick(self, t: int, key: str, seconds: float, tokens: float = 0.0) -> None:
        d = self.timing.setdefault(t, {})
        d[key] = d.get(key, 0.0) + seconds
        if tokens:
            d["gen_tokens"] = d.get("gen_tokens", 0.0) + tokens

    # --- data and models ---------------------------------------------------------------
    def prepare(self) -> None:
        cfg = self.cfg
        parts, manifest = load_splits(cfg.data, cfg.seed, self.run.path)
        self.d_init = parts["d_init"][: cfg.n_init_rows] if cfg.n_init_rows else parts["d_init"]
        q = parts["q_w2s"][: cfg.n_prompts] if cfg.n_prompts else parts["q_w2s"]
        self.q = [r["prompt"] for r in q]  # Q_w2s: prompts only, its labels are never read
        test = parts["test"][: cfg.n_eval_prompts] if cfg.n_eval_prompts else parts["test"]
        self.test = [r["prompt"] for r in test]
        self.synthetic = cfg.data.source == "synthetic"
        src_file = self.root / "sources.json"
        if src_file.is_file():
            saved = json.loads(src_file.read_text())
            self.sources = [ModelSource(**s) for s in saved["sources"]]
            self.methods = saved["methods"]
        else:
            corpus = [r["prompt"] + r["chosen"] + " " + r["rejected"] for r in parts["d_init"] + parts["test"]] + self.q
            self.sources, self.methods = [], []
            for a, spec in enumerate(self.specs):
                self.sources.append(resolve_source(spec.model, corpus, cfg.seed + a))
                method = spec.method
                if method == "auto":
                    method = "lora" if _params_of(spec.model) > cfg.lora_threshold_params else "full"
                if method != "full":
                    lookup("peft", method)
                self.methods.append(method)
            src_file.write_text(json.dumps({"sources": [s.to_dict() for s in self.sources], "methods": self.methods}))
        self.splits_digest = manifest["digest"]

    def agent_dir(self, a: int, stage: str) -> Path:
        return self.run.artifacts / "agents" / self.names[a] / stage

    def train_cfg(self, a: int, kind: str, n_rows: int):
        cfg, spec, lora = self.cfg, self.specs[a], self.methods[a] != "full"
        if kind == "sft":
            lr = spec.sft_lr or (cfg.sft_lora_lr if lora else cfg.sft.lr)
            base = cfg.sft
            steps = base.max_steps or base.epochs * math.ceil(n_rows / base.batch_size / base.grad_accum)
            update: dict = {}
            if spec.sft_max_steps and spec.sft_max_steps < steps:
                steps = update["max_steps"] = spec.sft_max_steps
            return base.model_copy(update={**update, "lr": lr,
                                           "warmup_steps": max(base.warmup_steps, int(cfg.sft_warmup_frac * steps))})
        lr = spec.dpo_lr or (cfg.dpo_lora_lr if lora else cfg.dpo_train.lr)
        return cfg.dpo_train.model_copy(update={"lr": lr})

    def train(self, a: int, label: str, rows: list[dict], init: str | None, objective: str, kind: str,
              out_dir: Path) -> dict:
        """One run of the one training loop for agent `a`; returns the artifact and its summary."""
        cfg = self.cfg
        if not rows:
            raise LatheError(f"macpo {label}: no training pairs left for {self.names[a]} (all dropped)")
        task = DPOTask(None if init else self.sources[a], rows, cfg.data.max_prompt, cfg.data.max_response,
                       self.methods[a], self.specs[a].adapter, cfg.dpo.beta, cfg.dpo.precompute_ref_logps,
                       init=init, objective=objective)
        storage = self.root / "train" / label.replace("/", "_")

        def tag(records: list[dict], total: int) -> None:
            self.reporter([{**r, "macpo_step": label, "agent": self.names[a]} for r in records], total)

        out = run_training(task, self.train_cfg(a, kind, len(rows)), cfg.ray, storage, seed=cfg.seed + a,
                           on_records=tag, artifact_dir=out_dir)
        if out.artifact is None:
            raise LatheError(f"macpo {label}: training produced no artifact")
        shutil.rmtree(storage, ignore_errors=True)  # the artifact is the checkpoint; optimizer state is not kept
        steps = [r for r in out.metrics if "loss" in r]
        return {"path": str(out.artifact), "rows": len(rows), "first_loss": steps[0]["loss"] if steps else None,
                "final_loss": steps[-1]["loss"] if steps else None,
                "final_margin": steps[-1].get("reward_margin") if steps else None}

    # --- actors ------------------------------------------------------------------------
    def pg(self, a: int):
        from lathe.jobs.macpo.engines import placement_group_for

        if a not in self.pgs:
            e = self.cfg.engines
            self.pgs[a] = placement_group_for(self.names[a], 2, e.cpus_per_actor, e.gpus_per_actor,
                                              e.placement_strategy)
        return self.pgs[a]

    def actor(self, a: int):
        """Agent a's live engine actor, loaded with its current checkpoint."""
        import ray

        from lathe.jobs.macpo.engines import pick_engine, start_actor

        if a not in self.actors:
            self.engine = pick_engine(self.cfg.engines.engine)
            act = start_actor(self.names[a], self.pg(a), 0, self.cfg, self.engine)
            ray.get(act.load.remote(self.current[a]))
            self.actors[a] = act
        return self.actors[a]

    def neg_actor(self, a: int, path: str):
        import ray

        from lathe.jobs.macpo.engines import pick_engine, start_actor

        if a not in self.neg_actors:
            act = start_actor(f"neg-{self.names[a]}", self.pg(a), 1, self.cfg, pick_engine(self.cfg.engines.engine))
            ray.get(act.load.remote(path))
            self.neg_actors[a] = act
        return self.neg_actors[a]

    def generate_all(self, actors: dict[int, Any], prompts: list[str], t: int, greedy: bool) -> dict[int, dict]:
        """Every actor generates for `prompts` concurrently; {agent: {"responses", "tokens", "seconds"}}."""
        import ray

        g = self.cfg.generation
        refs = {a: act.generate.remote(prompts, g.eval_max_new_tokens if greedy else g.max_new_tokens,
                                       0.0 if greedy else g.temperature, g.top_p, M.agent_seed(self.cfg.seed, t, a),
                                       g.batch_size, self.cfg.data.max_prompt) for a, act in actors.items()}
        return {a: ray.get(r) for a, r in refs.items()}

    def shutdown(self) -> None:
        import ray

        for act in list(self.actors.values()) + list(self.neg_actors.values()):
            try:
                ray.kill(act)
            except Exception:
                pass
        from ray.util.placement_group import remove_placement_group

        for pg in self.pgs.values():
            try:
                remove_placement_group(pg)
            except Exception:
                pass
        self.actors, self.neg_actors, self.pgs = {}, {}, {}

    # --- the steps ---------------------------------------------------------------------
    def steps_init(self) -> None:
        m, K = self.man, self.K
        pos_rows = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["chosen"]} for r in self.d_init]

        # Step 1: each teacher SFT on D_init (x, y⁺).
        for k in range(K):
            out = m.step(f"init/{self.names[k]}", lambda k=k: self.train(
                k, f"init/{self.names[k]}", pos_rows, None, "sft_chosen", "sft", self.agent_dir(k, "init")),
                self.before_step)
            self.current[k] = out["path"]
        # Step 2: weak labels on Q_w2s from every teacher, then the student's SFT.
        labels: dict[int, list[str]] = {}
        for k in range(K):
            def gen(k=k):
                res = self.generate_all({k: self.actor(k)}, self.q, 0, greedy=False)[k]
                self.tick(0, "generate_s", res["seconds"], res["tokens"])
                return {"file": self.write_json(f"init_labels/{self.names[k]}.json", res["responses"])}
            labels[k] = self.read_json(m.step(f"init_labels/{self.names[k]}", gen, self.before_step)["file"])
        rows = self.student_rows(labels)
        out = m.step(f"init/{self.names[self.student]}", lambda: self.train(
            self.student, f"init/{self.names[self.student]}", rows, None, "sft_chosen", "sft",
            self.agent_dir(self.student, "init")), self.before_step)
        self.current[self.student] = out["path"]
        self.init_paths = dict(self.current)
        # Step 3: negative agents (a copy of each agent's post-init weights, SFT on D_init's y⁻).
        neg_rows = [{"prompt": r["prompt"], "chosen": r["rejected"], "rejected": r["rejected"]} for r in self.d_init]
        self.neg_paths: dict[int, str] = {}
        for a in range(K + 1):
            out = m.step(f"negative/{self.names[a]}", lambda a=a: self.train(
                a, f"negative/{self.names[a]}", neg_rows, self.init_paths[a], "sft_chosen", "sft",
                self.agent_dir(a, "negative")), self.before_step)
            self.neg_paths[a] = out["path"]
        self.negatives = self.negative_responses(0)

    def student_rows(self, labels: dict[int, list[str]]) -> list[dict]:
        mode, K = self.cfg.student_init_labels, self.K
        rng = random.Random(self.cfg.seed)
        rows = []
        for i, x in enumerate(self.q):
            if mode == "all":
                ks = list(range(K))
            elif mode == "random_teacher":
                ks = [rng.randrange(K)]
            else:
                ks = [i % K]
            rows += [{"prompt": x, "chosen": labels[k][i], "rejected": labels[k][i]} for k in ks
                     if labels[k][i].strip()]
        return rows

    def negative_responses(self, t: int) -> dict[int, list[str]]:
        """y⁻_a(x) for every agent a, from a's OWN negative agent ν_a (generated once by default)."""
        out: dict[int, list[str]] = {}
        todo = [a for a in range(self.K + 1) if not self.man.done(f"negative_gen{t}/{self.names[a]}")]
        results = {}
        if todo:
            for a in todo:
                self.before_step(f"negative_gen{t}/{self.names[a]}")
            res = self.generate_all({a: self.neg_actor(a, self.neg_paths[a]) for a in todo}, self.q, 10_000 + t,
                                    greedy=False)
            for a in todo:
                self.tick(t, "generate_s", res[a]["seconds"], res[a]["tokens"])
                f = self.write_json(f"negatives/round{t}/{self.names[a]}.json",
                                    {"from": f"negative-{self.names[a]}", "responses": res[a]["responses"]})
                self.man.finish(f"negative_gen{t}/{self.names[a]}", {"file": f, "from": f"negative-{self.names[a]}"},
                                res[a]["seconds"])
            results = res
        for a in range(self.K + 1):
            rec = self.read_json(self.man.out(f"negative_gen{t}/{self.names[a]}")["file"])
            out[a] = rec["responses"]
        if results and not self.cfg.regenerate_negatives_each_round:
            import ray

            for act in self.neg_actors.values():  # never updated and no longer needed
                ray.kill(act)
            self.neg_actors = {}
        return out

    def evaluate(self, t: int) -> list[dict]:
        def do():
            t0 = time.perf_counter()
            res = self.generate_all({a: self.actor(a) for a in range(self.K + 1)}, self.test, 20_000 + t, greedy=True)
            rows = []
            for a in range(self.K + 1):
                ys = res[a]["responses"]
                row = {"round": t, "agent": self.names[a], "role": "student" if a == self.student else "teacher",
                       "checkpoint": self.current[a]}
                if self.synthetic:
                    row["reward"] = sum(P.rule_reward(x, y) for x, y in zip(self.test, ys)) / len(ys)
                if self.rm is not None:
                    r = self.rm(self.test, ys)
                    row["rm_reward"] = sum(r) / len(r)
                rows.append(row)
                self.write_json(f"round{t}/eval/{self.names[a]}.json", {"prompts": self.test, "responses": ys})
            self.tick(t, "eval_s", time.perf_counter() - t0)
            return rows
        return self.man.step(f"round{t}/eval", do, self.before_step)

    def round(self, t: int) -> None:
        import ray

        m, cfg, K, names = self.man, self.cfg, self.K, self.names
        negatives = self.negative_responses(t) if cfg.regenerate_negatives_each_round and t > 1 else self.negatives
        # 4a: every agent generates from its round-start state.
        responses: dict[int, list[str]] = {}
        for a in range(K + 1):
            def gen(a=a):
                res = self.generate_all({a: self.actor(a)}, self.q, t, greedy=False)[a]
                self.tick(t, "generate_s", res["seconds"], res["tokens"])
                return {"file": self.write_json(f"round{t}/gen/{names[a]}.json", res["responses"]),
                        "tokens": res["tokens"], "seconds": res["seconds"]}
            responses[a] = self.read_json(m.step(f"round{t}/gen/{names[a]}", gen, self.before_step)["file"])
        # 4b/4c: each receiver scores its allowed candidates (never its own response unless −MP).
        pairs: dict[int, list[dict]] = {}
        for a in M.updated_agents(K, cfg.ablations):
            allowed = M.candidates(a, K, cfg.ablations, cfg.teacher_positive_source)

            def score(a=a, allowed=allowed):
                ppl = None
                if len(allowed) > 1 or cfg.ppl_filter_quantile:
                    t0 = time.perf_counter()
                    act = self.actor(a)
                    refs = {c: act.ppl.remote(self.q, responses[c], cfg.data.max_prompt, cfg.data.max_response)
                            for c in allowed}
                    got = {c: ray.get(r)["ppl"] for c, r in refs.items()}
                    ppl = [{c: got[c][i] for c in allowed} for i in range(len(self.q))]
                    self.tick(t, "score_s", time.perf_counter() - t0)
                rows, drops = M.build_pairs(a, self.q, responses, ppl, negatives[a], K, cfg.ablations,
                                            cfg.teacher_positive_source, cfg.ppl_filter_quantile,
                                            seed=M.agent_seed(cfg.seed, t, a), negative_label=f"negative-{names[a]}")
                for r in rows:
                    r["positive_from"] = names[r["positive_from"]] if isinstance(r["positive_from"], int) \
                        else r["positive_from"]
                    if isinstance(r["negative_from"], int):
                        r["negative_from"] = names[r["negative_from"]]
                return {"file": self.write_json(f"round{t}/pairs/{names[a]}.json", rows), "drops": drops,
                        "n": len(rows)}
            pairs[a] = self.read_json(m.step(f"round{t}/pairs/{names[a]}", score, self.before_step)["file"])
        # 4e: the updates, π_ref = the round-start weights.
        objective = "dpo" if M.uses_dpo(cfg.ablations) else "sft_chosen"

        def update(a: int) -> dict:
            from lathe.jobs.macpo.engines import fingerprint_dir

            label = f"round{t}/train/{names[a]}"
            start = self.current[a]
            if not pairs[a]:  # every pair was dropped (e.g. empty generations): no update this round
                fp = fingerprint_dir(start)
                return {"path": start, "rows": 0, "skipped": "no pairs", "first_loss": None, "final_loss": None,
                        "reference_fingerprint": fp, "round_start_fingerprint": fp, "round_start": start}
            res = self.train(a, label, pairs[a], start, objective, "dpo", self.agent_dir(a, f"round_{t}"))
            ref = json.loads((Path(res["path"]) / "reference.json").read_text())
            res["reference_fingerprint"] = ref["fingerprint"]
            res["round_start_fingerprint"] = fingerprint_dir(start)
            res["round_start"] = start
            return res

        todo = [a for a in M.updated_agents(K, cfg.ablations) if not m.done(f"round{t}/train/{names[a]}")]
        t0 = time.perf_counter()
        if cfg.placement == "parallel" and len(todo) > 1:
            with ThreadPoolExecutor(len(todo)) as pool:
                futs = {a: pool.submit(lambda a=a: m.step(f"round{t}/train/{names[a]}", lambda: update(a),
                                                          self.before_step)) for a in todo}
                for f in futs.values():
                    f.result()
        else:
            for a in todo:
                m.step(f"round{t}/train/{names[a]}", lambda a=a: update(a), self.before_step)
        self.tick(t, "train_s", time.perf_counter() - t0)
        for a in M.updated_agents(K, cfg.ablations):
            self.current[a] = m.out(f"round{t}/train/{names[a]}")["path"]
        # Push the new weights into the live engine actors (Ray keeps running).
        for a in M.updated_agents(K, cfg.ablations):
            def push(a=a):
                if a in self.actors:
                    return ray.get(self.actors[a].load.remote(self.current[a]))
                return {"agent": names[a], "path": self.current[a], "fresh_actor": True}
            m.step(f"round{t}/push/{names[a]}", push, self.before_step)
        m.step(f"round{t}/checkpoints", lambda: {names[a]: self.current[a] for a in range(K + 1)})

    def restore_current(self) -> None:
        """Each agent's latest finished checkpoint, from the manifest (for a resumed run)."""
        for a in range(self.K + 1):
            for t in range(self.cfg.rounds, 0, -1):
                name = f"round{t}/train/{self.names[a]}"
                if self.man.done(name):
                    self.current[a] = self.man.out(name)["path"]
                    break

    def execute(self) -> dict:
        self.prepare()
        self.rm = None
        if self.cfg.reward_model:
            from lathe.methods.alignment.reward import RewardModel

            self.rm = RewardModel(self.cfg.reward_model, self.cfg.data.max_prompt, self.cfg.data.max_response)
        try:
            self.steps_init()
            self.restore_current()
            rewards = list(self.evaluate(0)) if not self.resumed_past(0) else list(self.man.out("round0/eval"))
            for t in range(1, self.cfg.rounds + 1):
                self.round(t)
                rewards += self.evaluate(t)
        finally:
            self.shutdown()
            self.reporter.close()
        return self.results(rewards)

    def resumed_past(self, t: int) -> bool:
        return self.man.done(f"round{t}/eval")

    def results(self, rewards: list[dict]) -> dict:
        from lathe.eval import alignment as E

        cfg, m = self.cfg, self.man
        timing = self.timing_table()
        ref_checks = []
        for t in range(1, cfg.rounds + 1):
            for a in M.updated_agents(self.K, cfg.ablations):
                o = m.out(f"round{t}/train/{self.names[a]}")
                ref_checks.append({"round": t, "agent": self.names[a],
                                   "reference_is_round_start": o["reference_fingerprint"] == o["round_start_fingerprint"],
                                   "final_loss": o["final_loss"], "final_margin": o.get("final_margin"),
                                   "pairs": o["rows"]})
        student = [r for r in rewards if r["agent"] == self.names[self.student]]
        key = "reward" if self.synthetic else "rm_reward"
        results: dict[str, Any] = {
            "agents": self.names, "methods": self.methods, "rounds": cfg.rounds,
            "ablations": cfg.ablations.model_dump(), "rewards": rewards, "reference_checks": ref_checks,
            "timing": timing, "engine": getattr(self, "engine", None), "attempts": m.data["attempts"],
            "checkpoints": {f"round_{t}": m.out(f"round{t}/checkpoints") for t in range(1, cfg.rounds + 1)},
            "splits_digest": self.splits_digest,
        }
        if student and key in student[0]:
            results["student_reward_round0"] = student[0][key]
            results["student_reward_final"] = student[-1][key]
        final = self.read_json(str(self.root / f"round{cfg.rounds}/eval/{self.names[self.student]}.json"))["responses"]
        base = self.read_json(str(self.root / f"round0/eval/{self.names[self.student]}.json"))["responses"]
        results["human_review_csv"] = str(E.export_review(self.test, final, base, self.run.path / "human_review.csv",
                                                          seed=cfg.seed))
        if cfg.judge_model:
            def judged():
                j = E.judge_both_orders(self.test, final, base, E.chat_judge(E.judge_client(cfg.judge_model)),
                                        cfg.judge_criterion, seed=cfg.seed)
                self.write_json("judge.json", j)
                return {k: j[k] for k in ("win", "tie", "loss", "n", "win_rate")}
            results["judge_vs_round0"] = m.step("judge", judged)
        E.write_macpo_report(self.run, cfg.name, results)
        self.run.write_results(results)
        return results

    def timing_table(self) -> list[dict]:
        rows = []
        for t, d in sorted(self.timing.items()):
            total = sum(v for k, v in d.items() if k.endswith("_s"))
            row = {"round": t, **{k: round(v, 3) for k, v in d.items()}}
            if d.get("generate_s"):
                row["gen_tokens_per_s"] = d.get("gen_tokens", 0) / d["generate_s"]
            for k in ("generate_s", "score_s", "train_s"):
                if total:
                    row[k.replace("_s", "_share")] = d.get(k, 0.0) / total
            rows.append(row)
        return rows


@register("job", "macpo")
class MacpoJob(Job):
    Config = MacpoConfig

    def run(self, cfg: MacpoConfig, run: RunDir, forward=None, show_progress: bool = True) -> dict:
        return MacpoRun(cfg, run, show_progress).execute()


INIT_STEPS = ("init/", "init_labels/", "negative/", "negative_gen0/", "round0/")


def fork_init(src_run: str | Path, dst_run: str | Path, agents: list[str] | None = None) -> None:
    """Seed `dst_run` with `src_run`'s initialisation steps (steps 1-3 and round 0), so a run that
    differs only in its rounds (an ablation, a different T) resumes after them. The agents, data
    and SFT recipe must be the same; the init checkpoints stay in `src_run` and are only read.

    `agents`: share only these agents' own init steps (their SFT, negative agent and its
    answers), e.g. teacher0 of a K=3 run for a K=1 run with the same teacher0 spec and seed;
    everything that depends on the other agents (weak labels, the student, round 0) is redone."""
    src, dst = Path(src_run) / "macpo", Path(dst_run) / "macpo"
    man = json.loads((src / "manifest.json").read_text())
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(src_run) / "splits.json", Path(dst_run) / "splits.json")
    if agents is None:
        shutil.copyfile(src / "sources.json", dst / "sources.json")
        keep = {k: v for k, v in man["steps"].items() if k.startswith(INIT_STEPS)}
        subs = ("init_labels", "negatives", "round0")
    else:
        own = {f"{p}{a}" for a in agents for p in ("init/", "negative/", "negative_gen0/")}
        keep = {k: v for k, v in man["steps"].items() if k in own}
        subs = ("negatives",)
        for a in agents:
            f = src / "negatives" / "round0" / f"{a}.json"
            if f.is_file():
                (dst / "negatives" / "round0").mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, dst / "negatives" / "round0" / f.name)
    for sub in subs if agents is None else ():
        if (src / sub).is_dir():
            shutil.copytree(src / sub, dst / sub, dirs_exist_ok=True)
    text = json.dumps({"steps": keep, "order": [k for k in man["order"] if k in keep], "attempts": 0})
    for sub in subs:
        text = text.replace(json.dumps(str(src / sub))[1:-1], json.dumps(str(dst / sub))[1:-1])
    (dst / "manifest.json").write_text(text)
