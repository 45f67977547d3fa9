"""`lathe demo` (what `make demo` runs): the LEGO assembly assistant pipeline, end to end.

1. synthesise the LEGO-MRTA data (manuals, conversations, v1/v2 exports) into the run dir;
2. fine-tune the assistant, SmolLM2-135M-Instruct with MELoRA, on Ray Train with a progress bar
   (the embedded default of `lathe.jobs.lego_assistant`; trained once, then cached);
3. evaluate it against the base model on the v2 test split (ToolACC, ThemeACC, BLEU-4, ROUGE-L):
   a table and a bar plot in the run's report.md (scores cached beside the model);
4. unless --no-serve: serve it and start the console and the XR bridge, printing both URLs;
   Ctrl-C stops everything.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

# the synthetic set the embedded default is trained on (lathe.jobs.lego_assistant.DEFAULT_RECIPE)
N_MANUALS, STEPS, SEED = 12, 20, 0


def _say(msg: str) -> None:
    print(f"lathe demo: {msg}", flush=True)


def evaluate(model_dir: Path, limit: int, max_new_tokens: int = 48) -> dict[str, dict]:
    """Base (few-shot prompted) and fine-tuned scores on the same test rows, cached beside the model."""
    cache = model_dir.parent / f"demo_eval-{limit}-{max_new_tokens}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    from lathe.eval.lego import FEW_SHOT, evaluate_rows, synthetic_lexicon
    from lathe.methods.lego.finetune import build_rows
    from lathe.platform.pretrained import pretrained_dir
    from lathe.platform.zoo import load_pretrained

    _, test = build_rows({"n_manuals": N_MANUALS, "steps_per_manual": STEPS, "eval_limit": limit}, SEED)
    lexicon = synthetic_lexicon(SEED, N_MANUALS, STEPS)
    results = {}
    for name, path, prefix in (("SmolLM2-135M-Instruct (few-shot)", pretrained_dir("smollm2-135m-instruct"),
                                FEW_SHOT), ("+ MELoRA fine-tune", model_dir, "")):
        t0 = time.perf_counter()
        model, tok = load_pretrained(path)
        results[name], _ = evaluate_rows(model, tok, test, lexicon, max_new_tokens, prefix=prefix)
        _say(f"scored {name} on {len(test)} test turns in {time.perf_counter() - t0:.0f} s")
        del model
    cache.write_text(json.dumps(results, indent=1))
    return results


def run(serve: bool = True, limit: int = 32, output_root: str = "runs") -> int:
    from lathe.eval.lego import HEADLINE, comparison_table, write_report
    from lathe.jobs.lego_assistant import assistant_dir
    from lathe.methods.lego.mrta import lego_synthetic

    run_dir = Path(output_root) / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    _say(f"1/4 synthesising LEGO-MRTA data ({N_MANUALS} manuals x {STEPS} steps) -> {run_dir / 'data'}")
    data = lego_synthetic(SEED, N_MANUALS, STEPS, out_dir=run_dir / "data")
    _say(f"    {len(data['conversations'])} conversations, {len(data['v2']['train'])} v2 train rows, "
         f"{len(data['v2']['test'])} test rows, {len(data['vqa'])} VQA pairs")
    _say("2/4 fine-tuning the assistant (SmolLM2-135M-Instruct + MELoRA) on Ray Train (cached after the first run)")
    model_dir = assistant_dir(show_progress=True)
    _say(f"    model: {model_dir}")
    _say("3/4 evaluating against the base model")
    results = evaluate(model_dir, limit)
    report = write_report(results, run_dir, base=next(iter(results)))
    print(comparison_table(results), flush=True)
    _say(f"    report: {report}  (metrics: {', '.join(HEADLINE)}; plot {run_dir / 'lego_metrics.png'})")
    if not serve:
        _say("done (--no-serve)")
        return 0
    _say("4/4 serving the assistant, the console and the XR bridge (Ctrl-C stops everything)")
    serve_everything(model_dir)
    return 0


def serve_everything(model_dir: Path) -> None:
    """A loopback Ray head that the console owns; the fine-tuned model on the LLM app of Ray Serve
    there; the console and the XR bridge, whose assistant talks to that endpoint. Blocks until Ctrl-C."""
    from lathe.platform.runtime import ray_session
    from lathe.serve.config import ServeConfig
    from lathe.serve.deploy import deploy
    from lathe.ui.head import LocalHead, free_port
    from lathe.ui.launch import env_token, launch

    head = LocalHead().start()
    try:
        with ray_session(head.gcs_address):
            cfg = ServeConfig.model_validate({
                "job": "serve", "name": "demo-llm", "http": {"port": free_port()},
                "llm": {"model": {"path": str(model_dir)}, "served_name": "lego-assistant",
                        "max_model_len": 2048, "max_tokens_limit": 512}})
            llm_url = deploy(cfg)["llm"] + "/v1"
        _say(f"    assistant LLM (OpenAI-compatible) at {llm_url}")
        handle = launch(address=head.address, llm_url=llm_url, token=env_token(), quiet=True)
        _say(f"    console at {handle.console_url}")
        _say(f"    WebXR page at {handle.xr_url}  (open it in a headset's browser; flat 3D view elsewhere)")
        handle.wait()
    finally:
        head.stop()


def add_parser(subparsers) -> None:
    sp = subparsers.add_parser("demo", help="the LEGO assistant pipeline: data, fine-tune, eval, then console + XR")
    sp.add_argument("--no-serve", action="store_true", help="run the pipeline and exit (no console, no bridge)")
    sp.add_argument("--limit", type=int, default=32, help="test turns scored per model")
    sp.add_argument("--output-root", default="runs")
    sp.set_defaults(fn=lambda a: run(serve=not a.no_serve, limit=a.limit, output_root=a.output_root))


if __name__ == "__main__":
    sys.exit(run(serve="--no-serve" not in sys.argv))
