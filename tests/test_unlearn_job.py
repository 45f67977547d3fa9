"""The `unlearn` job end to end on a tiny model (Ray Train on CPU) and its config rules."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from lathe.platform.config import validate
from lathe.platform.errors import ConfigError
from lathe.platform.runstore import RunDir


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(tmp_path, **over):
    data = {
        "job": "unlearn", "name": "ut", "seed": 0, "output_root": str(tmp_path / "runs"),
        "model": {"preset": "tiny-1m", "tokenizer_vocab": 300},
        "data": {"n_authors": 4, "qa_per_author": 3, "n_real_authors": 3, "n_world_facts": 3, "max_length": 48},
        "models": {"cache_dir": str(tmp_path / "cache"),
                   "train": {"epochs": 2, "batch_size": 8, "lr": 3e-3, "checkpoint_every": 100}},
        "unlearn": {"method": "npo", "train": {"epochs": 2, "batch_size": 3, "lr": 1e-3}},
        "uipe": {"alphas": [1, 0, 0.5]},
        "eval": {"max_new_tokens": 4},
        "ray": {"num_workers": 1},
    }
    for k, v in over.items():
        data[k] = {**data[k], **v} if isinstance(v, dict) else v
    return validate(data, "test.yaml")


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unlearn.loss: unknown key 'betaa'; did you mean 'beta'"):
        from lathe.jobs.unlearn import UnlearnJob

        cfg = _cfg(tmp_path, unlearn={"loss": {"betaa": 0.2}})
        UnlearnJob().run(cfg, RunDir.create(cfg), show_progress=False)
    with pytest.raises(ConfigError, match="data.split"):
        _cfg(tmp_path, data={"split": "forget20"})
    with pytest.raises(ConfigError, match="uipe.alphas"):
        _cfg(tmp_path, uipe={"alphas": []})


def test_pick_alpha_rule():
    from lathe.jobs.unlearn import pick_alpha

    rows = [{"alpha": 0.0, "forget_quality": 0.1, "model_utility": 0.5},
            {"alpha": 0.5, "forget_quality": 0.3, "model_utility": 0.49},
            {"alpha": 1.0, "forget_quality": 0.3, "model_utility": 0.48},
            {"alpha": 2.0, "forget_quality": 0.9, "model_utility": 0.2}]
    assert pick_alpha(rows, 0.475)["alpha"] == 0.5  # ties go to the smaller α; α=2 is under the floor
    assert pick_alpha(rows, None)["alpha"] == 2.0


@pytest.mark.slow  # three Ray Train fits (θ_ini, θ_ret, NPO) + 5 parallel eval tasks: ~1-3 min on 2 cores
def test_unlearn_pipeline_end_to_end(tmp_path, ray_local):
    from lathe.jobs.unlearn import UnlearnJob, ensure_sft, load_dataset

    cfg = _cfg(tmp_path)
    run = RunDir.create(cfg)
    seen = []
    res = UnlearnJob().run(cfg, run, forward=seen.append, show_progress=False)
    rows = res["rows"]
    alpha_rows = [r for r in rows if r["alpha"] is not None]
    assert [r["alpha"] for r in alpha_rows] == [0.0, 0.5, 1.0]  # one row per α, no retraining
    for r in alpha_rows:
        assert r["forget_quality"] is not None and 0 <= r["forget_quality"] <= 1
        assert r["model_utility"] is not None and r["forget_truth_ratio"] is not None
    assert res["fq_retain"] == 1.0  # the retain model against its own log
    assert [r["epoch"] for r in rows if r["alpha"] is None and r["epoch"] is not None] == [1]
    assert seen and all("loss" in r for r in seen)  # training records reach Tune's forward()
    assert res["steps"] == 2
    chosen = next(r for r in alpha_rows if r["alpha"] == res["best_alpha"])
    assert res["best_fq"] == chosen["forget_quality"] and res["score"] == chosen["forget_quality"]
    # UIPE α=0 is θ_un: the final artifact and the α=0 row agree
    assert res["fq_unlearned"] == alpha_rows[0]["forget_quality"]
    for f in ("report.md", "results.json", "plots/fq_vs_mu.png", "artifacts/retain_log.json",
              "artifacts/epochs/epoch_002.safetensors", "artifacts/eval/uipe_a=0.5/eval_log_forget.json"):
        assert (run.path / f).is_file(), f
    log = json.loads((run.path / "artifacts/retain_log.json").read_text())
    assert log["split"] == "forget10" and len(log["truth_ratio"]) == 3
    # θ(α*) is written as an HF checkpoint with α, the base method and both fingerprints
    from lathe.jobs.unlearn import fingerprint

    meta = json.loads((run.artifacts / "uipe" / "uipe.json").read_text())
    assert res["best_alpha"] is not None and meta["uipe_alpha"] == res["best_alpha"] and meta["base_method"] == "npo"
    assert meta["theta_ini_fingerprint"] == fingerprint(res["target"])
    assert meta["theta_un_fingerprint"] == fingerprint(run.artifacts / "unlearned")
    assert (run.artifacts / "uipe" / "config.json").is_file()
    # cached θ_ini / θ_ret: a second request returns the same directory without training
    ds = load_dataset(cfg.data, cfg.seed)
    t0 = time.perf_counter()
    again = ensure_sft("target", ds.get("full") + ds.general_knowledge(), cfg, ds, run, {}, False)
    assert str(again) == res["target"] and time.perf_counter() - t0 < 2


def test_unlearn_task_and_uipe_eval_model_without_ray(tmp_path, tiny_tokenizer, tiny_model):
    """The worker-side pieces: the task builds a frozen reference, pairs forget with retain rows,
    its loss trains; an eval spec with a state and α=0 rebuilds θ_un exactly."""
    import torch

    from lathe.jobs.checkpoint import save_tensors
    from lathe.jobs.unlearn import UnlearnTask, build_eval_model
    from lathe.platform.zoo import save_pretrained

    target = save_pretrained(tiny_model, tiny_tokenizer, tmp_path / "target")
    forget = [{"question": f"Who is F{i}?", "answer": f"F{i} is a poet."} for i in range(4)]
    retain = [{"question": f"Who is R{i}?", "answer": f"R{i} is a baker."} for i in range(6)]
    task = UnlearnTask(str(target), forget, retain, 48, "npo", {}, seed=0)
    built = task.build()
    assert len(built.dataset) == 4 and all(p.requires_grad is False for p in task.ref.parameters())
    batch = built.collate([built.dataset[i] for i in range(4)])
    assert batch["forget_input_ids"].shape[0] == batch["retain_input_ids"].shape[0] == 4
    loss, metrics = task.loss(built.model, batch)
    assert {"npo", "retain_loss", "forget_loss", "tokens"} <= set(metrics)
    assert abs(metrics["npo"] - 13.8629) < 1e-3  # θ = π_ref at step 0
    loss.backward()
    assert any(p.grad is not None for p in built.model.parameters())
    assert all(p.grad is None for p in task.ref.parameters())
    with torch.no_grad():
        state = {n: p + 0.01 for n, p in built.model.named_parameters()}
    save_tensors(state, tmp_path / "un.safetensors")
    un, _ = build_eval_model({"model_dir": str(target), "state": str(tmp_path / "un.safetensors"), "alpha": 0.0})
    assert all(torch.equal(p, state[n]) for n, p in un.named_parameters())
    two, _ = build_eval_model({"model_dir": str(target), "state": str(tmp_path / "un.safetensors"), "alpha": 2.0})
    ini = dict(tiny_model.named_parameters())
    for n, p in two.named_parameters():
        assert torch.allclose(p, ini[n] + 3 * (state[n] - ini[n]), atol=1e-5)


def test_models_learn_general_knowledge_only_in_the_synthetic_default(tmp_path):
    """θ_ini / θ_ret see the real-author and world-fact answers only for the synthetic tiny
    default; with published files (data.root) or a pretrained model, `full` / `retainXX` only."""
    from lathe.data import tofu as tofu_data
    from lathe.jobs.unlearn import load_dataset, sft_rows

    cfg = _cfg(tmp_path)
    ds = load_dataset(cfg.data, cfg.seed)
    general = ds.general_knowledge()
    assert sft_rows(cfg, ds, "target") == ds.get("full") + general
    root = ds.write(tmp_path / "tofu")
    published = _cfg(tmp_path, data={"root": str(root)})
    pds = tofu_data.TofuDataset.from_local(root)
    assert sft_rows(published, pds, "target") == pds.get("full")
    assert sft_rows(published, pds, "retain") == pds.retain("forget10")
    pretrained = _cfg(tmp_path, model={"path": str(tmp_path / "some-hf-dir")})
    assert sft_rows(pretrained, ds, "target") == ds.get("full")
    assert sft_rows(pretrained, ds, "retain") == ds.retain("forget10")


def test_retain_rows_are_redrawn_every_epoch():
    from lathe.jobs.unlearn import PairDataset

    forget = [{"f": i} for i in range(40)]
    retain = [{"r": i} for i in range(50)]
    ds = PairDataset(forget, retain, seed=3)
    e0 = [ds[i]["retain"]["r"] for i in range(40)]
    ds.set_epoch(1)
    e1 = [ds[i]["retain"]["r"] for i in range(40)]
    assert e0 != e1 and sum(a != b for a, b in zip(e0, e1)) > 30  # fresh draws, not one fixed pairing
    ds.set_epoch(0)
    assert [ds[i]["retain"]["r"] for i in range(40)] == e0  # seeded: a resumed run sees the same rows
    seen = set()
    for e in range(10):
        ds.set_epoch(e)
        seen |= {ds[i]["retain"]["r"] for i in range(40)}
    assert len(seen) >= 45  # over epochs, uniform draws reach (nearly) all of D_r


def test_training_encoding_follows_the_eval_template(tmp_path, tiny_tokenizer, tiny_model):
    """θ_ini / θ_ret / unlearning rows are encoded with eval.qa_template and append_eos_to_labels."""
    from lathe.eval import tofu as te
    from lathe.jobs.unlearn import TofuSFTTask, UnlearnTask, _model_key, load_dataset, train_encoding
    from lathe.platform.zoo import ModelSource, save_pretrained

    cfg = _cfg(tmp_path, eval={"qa_template": "llama2_inst", "append_eos_to_labels": False})
    enc = train_encoding(cfg)
    assert enc["qa_template"] == "llama2_inst" and enc["append_eos_to_labels"] is False and enc["max_length"] == 48
    ecfg = te.TofuEvalConfig.model_validate(enc)
    target = save_pretrained(tiny_model, tiny_tokenizer, tmp_path / "target")
    rows = [{"question": f"Who is F{i}?", "answer": f"F{i} is a poet."} for i in range(3)]
    task = UnlearnTask(str(target), rows, rows, 48, "ga", {}, seed=0, encoding=enc)
    built = task.build()
    want = te.encode(tiny_tokenizer, rows[0]["question"], rows[0]["answer"], ecfg)
    assert built.dataset[0]["forget"] == want
    assert tiny_tokenizer.decode(want["input_ids"]).startswith("[INST] Who is F0? [/INST]")
    assert want["labels"][-1] != tiny_tokenizer.eos_token_id
    src = ModelSource(preset="tiny-1m", tokenizer_json=tiny_tokenizer.backend_tokenizer.to_str())
    sft = TofuSFTTask(src, rows, 48, "full", {})
    sft.encoding = enc
    assert sft.build().dataset[0] == want
    ds = load_dataset(cfg.data, cfg.seed)
    assert _model_key(cfg, ds) != _model_key(_cfg(tmp_path), ds)  # cached θ_ini depends on the encoding


def test_unlearning_schedule_is_warmup_one_epoch_then_linear(ray_local, tmp_path):
    """The real loop under the unlearn section's default schedule: lr rises over one epoch, then
    decays linearly to 0 (transformers' linear schedule); datasets with `set_epoch` are told the
    epoch. The TrainConfig default (other jobs) keeps cosine to a 10% floor."""
    import torch

    from lathe.jobs.task import Built, TrainTask
    from lathe.jobs.trainer import make_schedule, run_training
    from lathe.jobs.unlearn import UnlearnConfig
    from lathe.platform.config import RayConfig, TrainConfig

    class EpochData:
        def __init__(self):
            self.epoch = -1

        def set_epoch(self, e):
            self.epoch = e

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"x": torch.ones(1), "epoch": self.epoch}

    class Toy(TrainTask):
        def build(self):
            self.data = EpochData()
            return Built(torch.nn.Linear(1, 1), None, self.data,
                         lambda items: {"x": torch.stack([it["x"] for it in items]),
                                        "epoch": torch.tensor([float(it["epoch"]) for it in items])})

        def loss(self, model, batch):
            return model(batch["x"]).pow(2).mean(), {"seen_epoch": float(batch["epoch"][0])}

        def save_artifact(self, model, tokenizer, out_dir):
            pass

    utrain = UnlearnConfig().unlearn.train
    assert (utrain.lr_schedule, utrain.warmup_epochs) == ("linear", 1.0)
    train = utrain.model_copy(update={"epochs": 3, "batch_size": 2, "grad_accum": 1, "lr": 1.0,
                                      "checkpoint_every": 100, "precision": "fp32"})
    out = run_training(Toy(), train, RayConfig(num_workers=1), tmp_path / "ck", seed=0)
    recs = sorted({r["step"]: r for r in out.metrics if "loss" in r}.values(), key=lambda r: r["step"])
    # 2 steps per epoch, 6 in all, warmup 2: lr after step s = s/2 for s < 2, else (6 - s) / 4
    assert [r["lr"] for r in recs] == pytest.approx([0.5, 1.0, 0.75, 0.5, 0.25, 0.0])
    assert [r["seen_epoch"] for r in recs] == [0, 0, 1, 1, 2, 2]
    # other jobs: unchanged default (cosine to 10%, warmup by steps)
    assert TrainConfig().lr_schedule == "cosine_floor"
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_schedule(opt, TrainConfig(warmup_steps=2), 10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:2] == pytest.approx([0.5, 1.0]) and lrs[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))


@pytest.mark.slow  # SmolLM2-135M through θ_ini, θ_ret, NPO and the eval: ~10 min on 2 cores
def test_unlearn_job_accepts_the_pretrained_preset(tmp_path, ray_local):
    # broken versions caught: a pretrained preset sent down the tiny-preset path (a tokenizer trained
    # from scratch, a random init), or the real model fine-tuned on the evaluation answers
    from lathe.jobs.unlearn import UnlearnJob, uses_general_knowledge

    cfg = _cfg(tmp_path, model={"preset": "smollm2-135m-instruct", "tokenizer_vocab": 2048},
               data={"n_authors": 3, "qa_per_author": 2, "n_real_authors": 2, "n_world_facts": 2},
               models={"train": {"epochs": 1, "batch_size": 4, "lr": 1e-4, "checkpoint_every": 100}},
               unlearn={"train": {"epochs": 1, "batch_size": 2, "lr": 1e-5}}, uipe={"alphas": [0, 1]})
    assert not uses_general_knowledge(cfg)
    res = UnlearnJob().run(cfg, RunDir.create(cfg), show_progress=False)
    for role in ("target", "retain"):
        model_cfg = json.loads((Path(res[role]) / "config.json").read_text())
        assert model_cfg["num_hidden_layers"] == 30 and model_cfg["vocab_size"] == 49152  # SmolLM2's own
    assert res["rows"] and all(math.isfinite(r["model_utility"]) for r in res["rows"] if "model_utility" in r)
