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


def _is_loopback(address: str) -> bool:
    if "://" in address:  # a Ray Client address: the driver runs on the cluster, not here
        return False
    host = address.rsplit(":", 1)[0]
    return host == "localhost" or host.startswith("127.")


def _init_embedded(kwargs: dict):
    """ray.init for an embedded cluster, tried twice: Ray waits a fixed 30 s for its raylet, and on an
    overloaded machine one more try usually passes. A failed start leaves its GCS, dashboard and
    monitors running (ray.shutdown does not know them), so they are killed before the retry."""
    import psutil
    import ray

    me = psutil.Process()
    before = {c.pid for c in me.children(recursive=True)}
    try:
        return ray.init(**kwargs)
    except Exception as e:
        if "timed out during startup" not in str(e):
            raise
    ray.shutdown()
    leaked = [c for c in me.children(recursive=True) if c.pid not in before]
    for c in leaked:
        with contextlib.suppress(psutil.NoSuchProcess):
            c.kill()
    psutil.wait_procs(leaked, timeout=10)
    return ray.init(**kwargs)


def _init_loopback(kwargs: dict):
    """ray.init on a cluster whose nodes registered as 127.0.0.1 (ray.cluster_utils, or nodes started
    with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0); tried first for a loopback address.

    Ray rewrites a loopback address to the machine's outward IP before it connects, and looks for the
    local raylet there, so such a cluster is unreachable. (`ray start --node-ip-address=127.0.0.1`
    itself registers the outward IP; the plain ray.init that follows a failure here reaches it.)
    Ray's own switch for this is read once at import; apply it for this connection only.
    """
    import ray
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        return ray.init(_node_ip_address="127.0.0.1", **kwargs)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, quiet: bool = True,
                serve_direct_ingress: bool = False) -> Iterator[dict]:
    """Connect to `address` (or RAY_ADDRESS), else start an embedded Ray on 127.0.0.1.

    An embedded Ray is shut down on exit; a cluster connection is only disconnected.
    Nested use re-uses the running session. `serve_direct_ingress` starts an embedded Ray whose
    Serve replicas serve HTTP themselves (`http.ingress: direct`); Serve reads the switch once per
    process, so a cluster must have it in its own environment.
    """
    import ray

    if ray.is_initialized():
        yield {"embedded": False, "address": "already-initialized"}
        return
    _loopback_env()
    address = address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                "TOKENIZERS_PARALLELISM": "false"}}
    if address and address != "local":
        # A driver started by `lathe submit` already carries the job's runtime env; Ray
        # refuses a second one that sets the same keys.
        in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
        init = dict(address=address, runtime_env=None if in_job else runtime_env, log_to_driver=not quiet)
        if _is_loopback(address):
            try:
                ctx = _init_loopback(init)
            except (ConnectionError, RuntimeError):
                # nodes that registered the outward IP (`ray start` rewrites 127.0.0.1): Ray's own path
                ray.shutdown()
                ctx = ray.init(**init)
        else:
            ctx = ray.init(**init)
        embedded = False
    else:
        # address="local": always start our own; with None, ray.init joins any Ray it finds running
        # on the machine (another process's cluster) and then refuses num_cpus
        # One local node cannot be preempted: Ray Train's preemption watcher (an actor that imports
        # Ray Train and polls the GCS) would only take CPU from the first training steps.
        embedded_env = {"env_vars": {**runtime_env["env_vars"], "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}}
        if serve_direct_ingress:
            # Serve drains a direct-ingress replica for 30 s before it stops, so that an external load
            # balancer sees it go; on one node nothing routes to it but its own URL.
            embedded_env["env_vars"].update({"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
                                             "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"})
        kwargs = dict(address="local", num_cpus=num_cpus or max(4, os.cpu_count() or 1), include_dashboard=False,
                      _node_ip_address="127.0.0.1", runtime_env=embedded_env, log_to_driver=not quiet,
                      logging_level="ERROR", configure_logging=True)
        ctx = _init_embedded(kwargs)
        embedded = True
    try:
        yield {"embedded": embedded, "address": getattr(ctx, "address_info", {}).get("gcs_address", address)}
    finally:
        ray.shutdown()
