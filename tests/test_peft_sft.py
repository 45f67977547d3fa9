"""The sft job trains LoRA / ASLoRA through the substrate's Ray Train loop (ray_local)."""

from __future__ import annotations

import json

import pytest

from lathe.platform.config import load_config
from lathe.platform.errors import ConfigError
from lathe.platform.runstore import RunDir


def _run(path, tmp_path, *overrides):
    from lathe.platform.registry import lookup

    cfg = load_config(path, ["ray.num_workers=1", "data.synthetic_size=64", "train.batch_size=8",
                             "train.checkpoint_every=100", f"output_root={tmp_path}", *overrides])
    run = RunDir.create(cfg)
    return lookup("job", "sft")().run(cfg, run, show_progress=False), run


@pytest.mark.slow  # a LoRA sft job end to end; test_llm_serving's lora_artifact runs the same job in the fast suite
def test_sft_lora_job_saves_adapter_only(ray_local, tmp_path):
    res, run = _run("configs/sft/lora.yaml", tmp_path, "train.max_steps=8", "train.lr=3e-2")
    assert res["final_loss"] < res["first_loss"]
    art = run.artifacts / "model"
    cfg = json.loads((art / "adapter_config.json").read_text())
    assert cfg["lathe_method"] == "lora" and cfg["peft_type"] == "LORA"
    from safetensors.torch import load_file

    keys = load_file(str(art / "adapter_model.safetensors"))
    assert keys and all(".lora_A." in k or ".lora_B." in k for k in keys)
    assert not (art / "model.safetensors").exists()
    # 4 layers x 4 targets x r(128+128)
    assert res["trainable_params"] == 4 * 4 * 8 * 256
    # the checkpoint holds the adapter's tensors only
    ckpts = sorted(run.path.glob("checkpoints/**/trainable.safetensors"))
    assert ckpts and all(".lora_" in k for k in load_file(str(ckpts[-1])))


@pytest.mark.slow
def test_sft_aslora_job_logs_merges(ray_local, tmp_path):
    res, run = _run("configs/sft/aslora.yaml", tmp_path, "train.max_steps=10",  # total_steps: from the loop
                    "train.lr=3e-2")
    rows = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    slots = [r["aslora_slots"] for r in rows if "aslora_slots" in r]
    assert slots[-1] == 4 and slots == sorted(slots, reverse=True)  # 4 groups x 4 layers -> 1 slot each
    assert sum(r.get("aslora_merges", 0) for r in rows) == 12
    art = run.artifacts / "model"
    cfg = json.loads((art / "adapter_config.json").read_text())
    assert len(cfg["lathe_merge_events"]) == 12
    # the loaded artifact is compact: r*d_in + K*r*d_out per group, K=1
    assert res["trainable_params"] == 4 * (8 * 128 + 1 * 8 * 128)


def test_sft_bad_adapter_option_is_one_line(tmp_path):
    from lathe.jobs.sft import SFTTask
    from lathe.platform.zoo import ModelSource, train_tokenizer

    tok = train_tokenizer(["a b c d e f"] * 4, vocab_size=64)
    src = ModelSource(preset="tiny-1m", tokenizer_json=tok.backend_tokenizer.to_str())
    task = SFTTask(src, [{"question": "q", "answer": "a"}], 16, "melora", {"n": 3})
    with pytest.raises(ConfigError, match=r"adapter.n=3 \(melora\) does not divide"):
        task.build()


_VLLM_SCRIPT = """
import sys
from vllm import LLM, SamplingParams
if __name__ == "__main__":
    llm = LLM(model=sys.argv[1], dtype="bfloat16", max_model_len=256, enforce_eager=True)
    out = llm.generate(["q: what is"], SamplingParams(max_tokens=4, temperature=0))
    print("GEN_OK", len(out[0].outputs[0].token_ids))
"""


@pytest.mark.slow
def test_merged_export_loads_in_vllm_cpu(tmp_path, tiny_tokenizer):
    import os
    import subprocess
    import sys

    pytest.importorskip("vllm")
    from lathe.methods import peft as P
    from lathe.platform.zoo import build_tiny

    model = P.get("aslora").apply(build_tiny("tiny-1m", vocab_size=len(tiny_tokenizer)), {"total_steps": 4})
    P.export_merged(model, tiny_tokenizer, tmp_path / "merged")
    script = tmp_path / "gen.py"
    script.write_text(_VLLM_SCRIPT)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "merged")], capture_output=True, text=True,
                         timeout=600, env=env)
    assert "GEN_OK 4" in out.stdout, out.stderr[-2000:]
