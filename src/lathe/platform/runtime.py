"""The only platform module that imports Ray: start embedded local Ray or join a cluster."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator


def _loopback_env() -> None:
    # Keep an embedded cluster on loopback (Ray otherwise binds the external interface).
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # Train V2 polls the State API; without the dashboard this warns every few seconds.
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION", "0")


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, quiet: bool = True) -> Iterator[dict]:
    """Connect to `address` (or RAY_ADDRESS), else start an embedded Ray on 127.0.0.1.

    An embedded Ray is shut down on exit; a cluster connection is only disconnected.
    Nested use re-uses the running session.
    """
    import ray

    if ray.is_initialized():
        yield {"embedded": False, "address": "already-initialized"}
        return
    _loopback_env()
    address = address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                "TOKENIZERS_PARALLELISM": "false"}}
    if address:
        # A driver started by `lathe submit` already carries the job's runtime env; Ray
        # refuses a second one that sets the same keys.
        in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
        ctx = ray.init(address=address, runtime_env=None if in_job else runtime_env, log_to_driver=not quiet)
        embedded = False
    else:
        # address="local": always start our own; with None, ray.init joins any Ray it finds running
        # on the machine (another process's cluster) and then refuses num_cpus
        kwargs = dict(address="local", num_cpus=num_cpus or max(4, os.cpu_count() or 1), include_dashboard=False,
                      _node_ip_address="127.0.0.1", runtime_env=runtime_env, log_to_driver=not quiet,
                      logging_level="ERROR", configure_logging=True)
        try:
            ctx = ray.init(**kwargs)
        except Exception as e:
            # Ray waits a fixed 30 s for its raylet; on an overloaded machine one more try usually passes
            if "timed out during startup" not in str(e):
                raise
            ray.shutdown()
            ctx = ray.init(**kwargs)
        embedded = True
    try:
        yield {"embedded": embedded, "address": getattr(ctx, "address_info", {}).get("gcs_address", address)}
    finally:
        ray.shutdown()
