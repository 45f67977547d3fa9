"""`edit` and `edit_stats` jobs: knowledge editing on EVOKE (FT-L, ROME, MEMIT, ROME-LTI, MEMIT-LTI).

`edit`: (1) data: the published EVOKE files, or the seeded synthetic graph; (2) for a preset
model, first teach it the graph by SFT (the sft job's task + `run_training`), cached under
`<cache_dir>/edit-kg-<hash>/`; (3) covariance stats as a Ray task, cached as safetensors;
(4) a pool of Ray edit actors, each with a model replica and the stats, runs the protocol
(single: edit, score, restore; sequential; batch) over its shard of cases; (5) a reducer
writes per-case JSON, the summary, a recall-vs-overfit table and an EOS-vs-efficacy plot.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from lathe.data import evoke
from lathe.jobs.base import Job, Reporter
from lathe.jobs.sft import SFTTask, load_artifact
from lathe.jobs.task import Built
from lathe.methods import sft as sft_lib
from lathe.platform.config import JobConfig, Strict, TrainConfig
from lathe.platform.errors import ConfigError, LatheError
from lathe.platform.registry import register
from lathe.platform.runstore import RunDir, markdown_table


class EditData(Strict):
    source: Literal["synthetic", "world_facts"] = Field(
        "synthetic", description="synthetic: the seeded fictional graph (a preset model learns it first); world_facts: "
                                 "EVOKE tasks around the curated world facts a pretrained model is probed to know")
    world_file: str | None = Field(None, description="world facts in the layout of lathe/data/world_facts.json "
                                                     "(default: the shipped list)")
    main: str | None = Field(None, description="evoke_main.json; default: synthetic")
    subj_spec: str | None = Field(None, description="evoke_subj_spec.json; default: synthetic")
    n_main: int = Field(24, ge=1)
    n_subj: int = Field(8, ge=0)
    n_relations: int = Field(4, ge=2, le=20)
    n_places: int = Field(6, ge=3)
    n_cases: int | None = Field(None, ge=1, description="evaluate only the first n main (and subj) records")


class KnowledgeSFT(Strict):
    """How a preset model first learns the synthetic graph (ignored for model.path)."""

    train: TrainConfig = TrainConfig(epochs=40, batch_size=32, lr=3e-3, warmup_steps=20, checkpoint_every=100000,
                                     log_every=20)
    icl_rows: int = Field(300, ge=0)
    distract_rows: int = Field(300, ge=0)
    filler_rows: int = Field(150, ge=0)
    max_length: int = Field(96, ge=16)


class StatsConfig(Strict):
    corpus: str | None = Field(None, description="local .txt (one sample per line) or .jsonl with 'text'; default: "
                                                 "the synthetic graph's text, or (world_facts) the model's own samples")
    n_samples: int = Field(1000, ge=1)
    sample_tokens: int = Field(64, ge=8, description="world_facts without a corpus: new tokens per model sample")


class Protocol(Strict):
    mode: Literal["single", "sequential", "batch"] = "single"
    batch_size: int = Field(1, ge=1)
    eval_every: int | None = Field(None, ge=1, description="sequential: also evaluate every k edits")
    check_restore: int = Field(3, ge=0, description="assert bitwise restore on the first k cases")
    generation_log: int = Field(2, ge=0, description="greedy multi-hop generations logged (100 tokens)")
    baseline: bool = Field(False, description="*_lti editors: also run the base editor (same options without "
                                              "'lti') on the same cases, for the with/without-LTI table and plot")


class ScoringConfig(Strict):
    legacy_llama: bool = Field(False, description="candidate tokens as tok(c) without BOS, as the reference code "
                                                  "does for Llama tokenizers (spec section 3)")


class EditConfig(JobConfig):
    job: Literal["edit"] = "edit"
    editor: str = "rome"
    options: dict[str, Any] = Field(default_factory=dict, description="the editor's own hyperparameters")
    data: EditData = EditData()
    knowledge: KnowledgeSFT = KnowledgeSFT()
    stats: StatsConfig = StatsConfig()
    protocol: Protocol = Protocol()
    scoring: ScoringConfig = ScoringConfig()
    cache_dir: str = "runs/cache"
    threads_per_worker: int = Field(1, ge=1)


class EditStatsConfig(JobConfig):
    job: Literal["edit_stats"] = "edit_stats"
    layers: list[int] = Field(min_length=1)
    data: EditData = EditData()
    knowledge: KnowledgeSFT = KnowledgeSFT()
    stats: StatsConfig = StatsConfig()
    cache_dir: str = "runs/cache"
    cov_ridge: float = 0.0
    modules: dict[str, str] = Field(default_factory=dict, description="module templates (as options.modules of "
                                                                      "an editor) for architectures without defaults")


# ---------------------------------------------------------------------------------------
# Data and the knowledge model


def load_data(d: EditData, seed: int) -> tuple[list[dict], list[dict], evoke.KnowledgeGraph | None]:
    if (d.main is None) != (d.subj_spec is None):
        raise ConfigError("data: set both data.main and data.subj_spec, or neither (synthetic)")
    if d.main is not None:
        main, subj, kg = evoke.load_evoke_main(d.main), evoke.load_evoke_subj_spec(d.subj_spec), None
    else:
        main, subj, kg = evoke.evoke_synthetic(seed, d.n_main, d.n_subj, d.n_relations, d.n_places)
    if d.n_cases:
        main, subj = main[:d.n_cases], subj[:d.n_cases]
    return main, subj, kg


class KnowledgeTask(SFTTask):
    """The sft job's task with raw-completion rows: `prompt answer</s>`, loss on the answer only."""

    def build(self) -> Built:
        model, tok = self.source.load()
        enc = []
        for p, a in self.rows:
            prompt = tok(p)["input_ids"]
            ans = evoke_cont(tok, p, a) + [tok.eos_token_id]
            ids = (prompt + ans)[:self.max_length]
            enc.append({"input_ids": ids, "labels": ([sft_lib.IGNORE] * len(prompt) + ans)[:self.max_length]})
        return Built(model, tok, enc, sft_lib.pad_collate(tok.pad_token_id))


def evoke_cont(tok, p, a):
    from lathe.methods.editing.common import continuation_ids

    return continuation_ids(tok, p, a)


def knowledge_model(cfg: EditConfig | EditStatsConfig, kg: evoke.KnowledgeGraph | None, main: list[dict],
                    reporter: Reporter | None = None) -> tuple[Path, dict]:
    """Directory of the model to edit: model.path, or the cached graph-trained preset."""
    from lathe.jobs.trainer import run_training
    from lathe.platform.zoo import resolve_source

    if cfg.model.path is not None:
        return Path(cfg.model.path), {"cached": None}
    if kg is None:
        raise ConfigError("model: a preset model needs the synthetic graph to learn; set model.path for real files")
    k = cfg.knowledge
    key = json.dumps({"seed": cfg.seed, "data": cfg.data.model_dump(exclude={"n_cases"}), "model": cfg.model.model_dump(),
                      "k": k.model_dump(mode="json"), "v": evoke.GENERATOR_VERSION}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    root = Path(cfg.cache_dir) / f"edit-kg-{digest}"
    model_dir = root / "model"
    if (model_dir / "config.json").is_file():
        return model_dir.resolve(), {"cached": True, "dir": str(model_dir)}
    rows = evoke.knowledge_corpus(kg, cfg.seed, k.icl_rows, k.distract_rows, k.filler_rows)
    corpus = [p + " " + a for p, a in rows] + [r["requested_rewrite"]["prompt"] for r in main]
    source = resolve_source(cfg.model, corpus, cfg.seed)
    task = KnowledgeTask(source, rows, k.max_length, "full", {})
    out = run_training(task, k.train, cfg.ray.model_copy(update={"num_workers": 1}), root / "checkpoints",
                       seed=cfg.seed, on_records=reporter, artifact_dir=model_dir)
    (root / "key.json").write_text(key)
    steps = [r for r in out.metrics if "loss" in r]
    return model_dir.resolve(), {"cached": False, "dir": str(model_dir), "sft_final_loss": steps[-1]["loss"] if steps else None,
                                 "sft_steps": steps[-1]["step"] if steps else 0}


def read_corpus(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise LatheError(f"{p}: no such stats corpus file")
    lines = [ln for ln in p.read_text().splitlines() if ln.strip()]
    if p.suffix == ".jsonl":
        out = []
        for i, ln in enumerate(lines):
            try:
                out.append(json.loads(ln)["text"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise LatheError(f"{p}: line {i + 1}: expected a JSON object with a 'text' field") from None
        return out
    return lines


def stats_texts(cfg, kg) -> list[str]:
    if cfg.stats.corpus:
        return read_corpus(cfg.stats.corpus)
    if kg is None:
        raise ConfigError("stats.corpus: needed when editing a real model (no synthetic graph)")
    return evoke.stats_corpus(kg, cfg.seed, cfg.stats.n_samples)


def _stats_task(model_dir: str, layers: list[int], texts: list[str], n: int, cache: str, modules: dict, seed: int):
    from lathe.methods.editing.common import ModuleTemplates, Resolver, load_or_compute_stats

    torch.set_num_threads(1)
    model, tok = load_artifact(model_dir)
    model.eval()
    res = Resolver.of(model, ModuleTemplates(**modules))
    return load_or_compute_stats(model, tok, res, layers, texts, n, cache, seed)


def compute_stats_remote(model_dir: Path, layers: list[int], texts: list[str], n: int, cache: str,
                         modules: dict, seed: int) -> dict[int, torch.Tensor]:
    import ray

    fn = ray.remote(num_cpus=1)(_stats_task)
    return ray.get(fn.remote(str(model_dir), layers, texts, n, str(Path(cache).resolve() / "stats"), modules, seed))


# ---------------------------------------------------------------------------------------
# A pretrained model and the world facts it knows (data.source: world_facts)


def pretrained_model_dir(cfg: EditConfig | EditStatsConfig) -> Path:
    """model.path, or the HF directory of a pretrained zoo preset (e.g. smollm2-135m-instruct)."""
    if cfg.model.path is not None:
        return Path(cfg.model.path)
    try:
        from lathe.platform.zoo import pretrained_dir
    except ImportError:
        pretrained_dir = None
    try:
        if pretrained_dir is None:
            raise LatheError("no pretrained presets in this build")
        return Path(pretrained_dir(cfg.model.preset))
    except (LatheError, KeyError, ValueError) as e:
        raise ConfigError(f"model.preset: data.source=world_facts edits a pretrained model; {cfg.model.preset!r} is "
                          f"not one ({e}); use model.preset: smollm2-135m-instruct or model.path") from None


def world_setup_local(model, tok, d: EditData, st: StatsConfig, seed: int, cache: str | Path,
                      need_texts: bool = True) -> tuple[list[dict], list[dict], dict, list[str]]:
    """(main, subj, probe info, stats texts) for a loaded pretrained model: probe the curated facts
    (cached per model fingerprint), build the EVOKE records around the known ones, and (when
    stats.corpus is unset) sample the model's own text for the covariance statistics (cached)."""
    from lathe.data import world_facts as wf
    from lathe.methods.editing.common import model_fingerprint
    from lathe.methods.editing.corpus import model_samples

    cache = Path(cache)
    world = wf.load_world(d.world_file)
    known, info = wf.known_facts(model, tok, world, cache / "world-facts")
    main, subj = wf.evoke_world(world, known, seed, d.n_main, d.n_subj)
    if not main:
        raise LatheError(f"world facts: the model knows {len(known)} of {info['candidates']} facts, too few for any "
                         f"EVOKE record")
    if d.n_cases:
        main, subj = main[:d.n_cases], subj[:d.n_cases]
    info.update({"main_records": len(main), "subj_records": len(subj)})
    texts: list[str] = []
    if need_texts:
        if st.corpus:
            texts = read_corpus(st.corpus)
        else:
            path = cache / "stats-corpus" / f"{model_fingerprint(model)}-n{st.n_samples}-t{st.sample_tokens}-s{seed}.txt"
            if path.is_file():
                texts = json.loads(path.read_text())
            else:
                texts = model_samples(model, tok, st.n_samples, st.sample_tokens, seed)
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + f".tmp{time.time_ns()}")
                tmp.write_text(json.dumps(texts))
                tmp.replace(path)
            info["stats_corpus"] = str(path)
    return main, subj, info, texts


def _world_task(model_dir: str, d: EditData, st: StatsConfig, seed: int, cache: str, need_texts: bool):
    torch.set_num_threads(1)
    model, tok = load_artifact(model_dir)
    model.eval()
    return world_setup_local(model, tok, d, st, seed, cache, need_texts)


def world_setup(cfg: EditConfig | EditStatsConfig, need_texts: bool = True):
    """Ray task around `world_setup_local` (the driver never loads the model)."""
    import ray

    model_dir = pretrained_model_dir(cfg)
    if not (model_dir / "config.json").is_file():
        raise ConfigError(f"model.path: {model_dir} is not a model directory (no config.json)")
    fn = ray.remote(num_cpus=1)(_world_task)
    main, subj, info, texts = ray.get(fn.remote(str(model_dir), cfg.data, cfg.stats, cfg.seed,
                                                str(Path(cfg.cache_dir).resolve()), need_texts))
    return model_dir.resolve(), main, subj, info, texts


# ---------------------------------------------------------------------------------------
# The edit actor (pure-PyTorch work; Ray only carries it)


class EditWorker:
    def __init__(self, model_dir: str, editor: str, options: dict, stats: dict, threads: int, seed: int,
                 legacy_llama: bool = False, loaded: tuple | None = None):
        from lathe.methods.editing import editor_config
        from lathe.methods.editing.common import param_fingerprints

        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        # `loaded`: an already loaded (model, tokenizer), for in-process benchmarks over several editors
        self.model, self.tok = loaded if loaded is not None else load_artifact(model_dir)
        self.model.eval()
        self.legacy_llama = legacy_llama
        self.fingerprints = param_fingerprints(self.model)  # the unedited weights, every parameter
        self.mod, self.cfg = editor_config(editor, options)
        self.stats = stats
        self.templates = None
        if hasattr(self.cfg, "context_template_length_params"):
            from lathe.methods.editing.common import context_templates

            self.templates = context_templates(self.model, self.tok, self.cfg.context_template_length_params,
                                               self.cfg.template_seed)

    def _edit(self, reqs):
        return self.mod.apply(self.model, self.tok, reqs, self.cfg, self.stats, self.templates)

    def _score(self, recs: list[tuple[str, dict]]) -> list[dict]:
        from lathe.eval import evoke as ev

        sc = ev.Scorer(self.model, self.tok, legacy_llama=self.legacy_llama)
        return [ev.score_main(sc, r) if kind == "main" else ev.score_subj(sc, r) for kind, r in recs]

    def run_batches(self, batches: list[list[tuple[str, dict]]], check_restore: int, gen_log: int) -> list[dict]:
        """Single/batch protocol: per batch, score pre, edit, score post, restore (bitwise)."""
        from lathe.eval import evoke as ev
        from lathe.methods.editing import restore

        out, checked = [], 0
        for batch in batches:
            pre = self._score(batch)
            t0 = time.perf_counter()
            res = self._edit([evoke.EditRequest.from_record(r) for _, r in batch])
            edit_s = time.perf_counter() - t0
            post = self._score(batch)
            gens = {}
            for kind, r in batch:
                if gen_log > 0 and kind == "main" and r.get("portability"):
                    gens[r["case_id"]] = ev.greedy_generate(self.model, self.tok,
                                                            evoke.multihop_prompt(r["portability"]["New Question"]))
                    gen_log -= 1
            restore(self.model, res.originals)
            did_check = checked < check_restore
            if did_check:  # every parameter, not only those the editor says it touched
                self.check_unedited()
                checked += 1
            for (kind, r), a, b in zip(batch, pre, post):
                row = {"case_id": r["case_id"], "set": kind, "pre": a, "post": b, "edit_s": edit_s / len(batch),
                       "batch": len(batch), "restored_checked": did_check}
                if r["case_id"] in gens and kind == "main":
                    row["multi_hop_generation"] = gens[r["case_id"]]
                out.append(row)
        return out

    def weights_changed(self) -> list[str]:
        """Parameters whose whole-tensor fingerprint differs from the unedited model's."""
        from lathe.methods.editing.common import param_fingerprints

        now = param_fingerprints(self.model)
        return [n for n, f in self.fingerprints.items() if now.get(n) != f]

    def check_unedited(self) -> None:
        bad = self.weights_changed()
        if bad:
            raise RuntimeError(f"restore failed: {len(bad)} parameters differ from the unedited model, e.g. {bad[0]}")

    def run_sequential(self, recs: list[tuple[str, dict]], eval_every: int | None) -> dict:
        pre = self._score(recs)
        curve = []
        t0 = time.perf_counter()
        for i, (kind, r) in enumerate(recs):
            self._edit([evoke.EditRequest.from_record(r)])
            if eval_every and (i + 1) % eval_every == 0 and i + 1 < len(recs):
                from lathe.eval.evoke import aggregate

                curve.append({"edits": i + 1, **aggregate([x for x in self._score(recs[:i + 1])])})
        edit_s = time.perf_counter() - t0
        post = self._score(recs)
        rows = [{"case_id": r["case_id"], "set": kind, "pre": a, "post": b, "edit_s": edit_s / len(recs)}
                for (kind, r), a, b in zip(recs, pre, post)]
        return {"rows": rows, "curve": curve}


# ---------------------------------------------------------------------------------------


def _layers(editor: str, options: dict, model_dir: Path) -> list[int]:
    from lathe.methods.editing import editor_config
    from lathe.methods.editing.common import num_layers, preset_layers

    mod, ecfg = editor_config(editor, options)
    if editor == "ft_l":
        return []
    cfgj = json.loads((model_dir / "config.json").read_text())
    n = cfgj.get("num_hidden_layers") or cfgj.get("n_layer")
    p = preset_layers(int(n))
    if editor.startswith("rome"):
        return [ecfg.layer if ecfg.layer is not None else p["rome_layer"]]
    return list(ecfg.layers) if ecfg.layers else p["memit_layers"]


def summarize(rows: list[dict]) -> dict:
    from lathe.eval.evoke import aggregate, overfit_eos

    out = {}
    for when in ("pre", "post"):
        agg = aggregate([r[when] for r in rows])
        agg["overfit_EOS_mean"] = overfit_eos(agg)
        out[when] = agg
    return out


def _run_protocol(cfg: EditConfig, editor: str, options: dict, model_dir: Path, stats_ref,
                  recs: list[tuple[str, dict]]) -> tuple[list[dict], list[dict]]:
    """(per-case rows, sequential curve) for one editor over a pool of Ray edit actors."""
    import ray

    Worker = ray.remote(num_cpus=cfg.ray.cpus_per_worker)(EditWorker)
    p = cfg.protocol
    if p.mode == "sequential":  # one model accumulates every edit: one actor
        w = Worker.remote(str(model_dir), editor, options, stats_ref, cfg.threads_per_worker, cfg.seed,
                          cfg.scoring.legacy_llama)
        seq = ray.get(w.run_sequential.remote(recs, p.eval_every))
        ray.kill(w)
        return seq["rows"], seq["curve"]
    bs = p.batch_size if p.mode == "batch" else 1
    batches = [recs[i:i + bs] for i in range(0, len(recs), bs)]
    n_w = min(cfg.ray.num_workers, len(batches))
    workers = [Worker.remote(str(model_dir), editor, options, stats_ref, cfg.threads_per_worker, cfg.seed,
                             cfg.scoring.legacy_llama) for _ in range(n_w)]
    shards = [batches[i::n_w] for i in range(n_w)]
    futs = [w.run_batches.remote(s, p.check_restore, p.generation_log if i == 0 else 0)
            for i, (w, s) in enumerate(zip(workers, shards))]
    rows = [r for part in ray.get(futs) for r in part]
    for w in workers:
        ray.kill(w)
    rows.sort(key=lambda r: (r["set"], r["case_id"]))
    return rows, []


@register("job", "edit")
class EditJob(Job):
    Config = EditConfig

    def run(self, cfg: EditConfig, run: RunDir, forward=None, show_progress: bool = True) -> dict:
        import ray

        from lathe.methods.editing import editor_config

        editor_config(cfg.editor, cfg.options, "options")  # clear config errors before any work
        base = cfg.editor[:-len("_lti")] if cfg.protocol.baseline and cfg.editor.endswith("_lti") else None
        base_opts = {k: v for k, v in cfg.options.items() if k != "lti"}
        if base:
            editor_config(base, base_opts, "options (baseline without LTI)")
        t0 = time.perf_counter()
        texts = None
        if cfg.data.source == "world_facts":  # a pretrained model, probed on the curated world facts
            model_dir, main, subj, kinfo, texts = world_setup(cfg, need_texts=cfg.editor != "ft_l")
            kg = None
        else:
            main, subj, kg = load_data(cfg.data, cfg.seed)
            reporter = Reporter(run, desc="edit[knowledge sft]", show=show_progress, forward=forward)
            try:
                model_dir, kinfo = knowledge_model(cfg, kg, main, reporter)
            finally:
                reporter.close()
        t_sft = time.perf_counter() - t0
        layers = _layers(cfg.editor, cfg.options, model_dir)
        stats: dict = {}
        t1 = time.perf_counter()
        if layers:
            modules = cfg.options.get("modules", {}) or {}
            stats = compute_stats_remote(model_dir, layers, texts if texts is not None else stats_texts(cfg, kg),
                                         cfg.stats.n_samples, cfg.cache_dir, modules, cfg.seed)
        t_stats = time.perf_counter() - t1
        recs = [("main", r) for r in main] + [("subj", r) for r in subj]
        stats_ref = ray.put(stats)
        t2 = time.perf_counter()
        rows, curve = _run_protocol(cfg, cfg.editor, cfg.options, model_dir, stats_ref, recs)
        t_edit = time.perf_counter() - t2
        cases = run.path / "cases"
        cases.mkdir(exist_ok=True)
        for r in rows:
            (cases / f"{r['set']}-{r['case_id']}.json").write_text(json.dumps(r, indent=1))
        summary = summarize(rows)
        n_edits = len(rows)
        results = {"editor": cfg.editor, "mode": cfg.protocol.mode, "cases": n_edits, "summary": summary,
                   "knowledge": kinfo, "layers": layers, "sft_s": t_sft, "stats_s": t_stats, "edit_eval_s": t_edit,
                   "mean_edit_s": sum(r["edit_s"] for r in rows) / max(1, n_edits), "curve": curve,
                   "workers": cfg.ray.num_workers,
                   "generations": {r["case_id"]: r["multi_hop_generation"] for r in rows if "multi_hop_generation" in r}}
        if base:
            brows, bcurve = _run_protocol(cfg, base, base_opts, model_dir, stats_ref, recs)
            (cases / base).mkdir(exist_ok=True)
            for r in brows:
                (cases / base / f"{r['set']}-{r['case_id']}.json").write_text(json.dumps(r, indent=1))
            results["baseline"] = {"editor": base, "summary": summarize(brows), "curve": bcurve,
                                   "mean_edit_s": sum(r["edit_s"] for r in brows) / max(1, len(brows))}
        write_report(run, cfg, results)
        return results


def task_table(columns: dict[str, dict]) -> str:
    """Recall vs overfit tasks as rows, one column per (label -> summary dict)."""
    from lathe.eval.evoke import OVERFIT, RECALL
    from lathe.platform.runstore import markdown_table

    spec = [("recall", t, "success") for t in RECALL]
    for t in OVERFIT:
        spec += [("overfit", t, m) for m in (("EOS", "AMS", "CAP", "DP", "OAP") if t == "multi_hop"
                                             else ("EOS", "CAP", "DP"))]
    spec.append(("overfit", "mean of the four", "EOS"))
    rows = []
    for kind, t, m in spec:
        key = t if kind == "recall" else ("overfit_EOS_mean" if t.startswith("mean") else f"{t}.{m}")
        row = {"group": kind, "task": t, "metric": m}
        for label, s in columns.items():
            row[label] = s.get(key, float("nan"))
        rows.append(row)
    return markdown_table(rows, digits=3)


def table_rows(summary: dict, label: str) -> list[dict]:
    from lathe.eval.evoke import OVERFIT, RECALL

    rows = []
    for when in ("pre", "post"):
        s = summary[when]
        row = {"editor": label, "when": when}
        for t in RECALL:
            row[t] = s.get(t, float("nan"))
        for t in OVERFIT:
            row[f"{t} EOS"] = s.get(f"{t}.EOS", float("nan"))
            row[f"{t} CAP"] = s.get(f"{t}.CAP", float("nan"))
            row[f"{t} DP"] = s.get(f"{t}.DP", float("nan"))
        row["multi_hop AMS"] = s.get("multi_hop.AMS", float("nan"))
        rows.append(row)
    return rows


def eos_efficacy_plot(path: Path, points: dict[str, tuple[float, float]], title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=110)
    for label, (eff, eos) in points.items():
        ax.scatter([eff], [eos], s=60, marker="*" if "lti" in label.lower() else "o")
        ax.annotate(label, (eff, eos), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("Efficacy (%)")
    ax.set_ylabel("mean EOS over overfit tasks (%)")
    ax.set_xlim(-5, 105)
    ax.set_ylim(-5, 105)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(run: RunDir, cfg: EditConfig, results: dict) -> None:
    s = results["summary"]
    points = {"unedited": (s["pre"].get("efficacy", 0), s["pre"]["overfit_EOS_mean"])}
    columns = {"unedited": s["pre"]}
    b = results.get("baseline")
    if b:
        points[b["editor"]] = (b["summary"]["post"].get("efficacy", 0), b["summary"]["post"]["overfit_EOS_mean"])
        columns[b["editor"]] = b["summary"]["post"]
    points[cfg.editor] = (s["post"].get("efficacy", 0), s["post"]["overfit_EOS_mean"])
    columns[cfg.editor] = s["post"]
    title = f"{cfg.name}: EOS vs efficacy" + (", with and without LTI" if b else "")
    plot = eos_efficacy_plot(run.path / "plots" / "eos_vs_efficacy.png", points, title)
    run.write_results(results)
    info = markdown_table([{k: results[k] for k in ("editor", "mode", "cases", "layers", "sft_s", "stats_s",
                                                     "edit_eval_s", "mean_edit_s")}])
    gens = "\n".join(f"- case {k}: `{v!r}`" for k, v in results["generations"].items()) or "(none)"
    sections = [("Run", info),
                ("Recall vs overfit tasks (x100; recall: P(o*) > P(o); EOS: the right answer beats o*)",
                 task_table(columns))]
    if results["curve"]:
        sections.append(("Sequential editing: metrics after k edits (on the first k records)",
                         markdown_table([{"edits": c["edits"], "efficacy": c.get("efficacy", float("nan")),
                                          "paraphrase": c.get("paraphrase", float("nan"))} for c in results["curve"]],
                                        digits=3)))
    sections.append(("Greedy multi-hop generations (post-edit)", gens))
    run.write_report(f"edit: {cfg.name}", sections, [plot])


@register("job", "edit_stats")
class EditStatsJob(Job):
    Config = EditStatsConfig

    def run(self, cfg: EditStatsConfig, run: RunDir, forward=None, show_progress: bool = True) -> dict:
        from safetensors.torch import save_file

        from lathe.methods.editing.common import with_ridge

        t0 = time.perf_counter()
        if cfg.data.source == "world_facts":
            model_dir, _, _, kinfo, texts = world_setup(cfg)
        else:
            main, subj, kg = load_data(cfg.data, cfg.seed)
            model_dir, kinfo = knowledge_model(cfg, kg, main, None)
            texts = stats_texts(cfg, kg)
        stats = compute_stats_remote(model_dir, cfg.layers, texts, cfg.stats.n_samples, cfg.cache_dir, cfg.modules,
                                     cfg.seed)
        out = {}
        for layer, c in stats.items():
            c = with_ridge(c.double(), cfg.cov_ridge)
            ev = torch.linalg.eigvalsh(c)
            out[str(layer)] = {"dim": c.shape[0], "trace": float(torch.trace(c)), "min_eig": float(ev[0]),
                               "max_eig": float(ev[-1])}
            save_file({"mom2": stats[layer].contiguous()}, str(run.artifacts / f"mom2_layer{layer}.safetensors"))
        results = {"layers": out, "model": str(model_dir), "samples": min(len(texts), cfg.stats.n_samples),
                   "wall_s": time.perf_counter() - t0, "cache": str(Path(cfg.cache_dir).resolve() / "stats")}
        run.write_results(results)
        run.write_report(f"edit_stats: {cfg.name}", [("Statistics", markdown_table(
            [{"layer": k, **v} for k, v in out.items()]))])
        return results
