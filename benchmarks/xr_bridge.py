"""XR bridge on loopback: scene-update latency with 1, 8 and 32 clients, GLB bytes per step (full
scene against brick diff), and scene frames dropped for a slow client.

The bridge runs in this process under uvicorn (a scripted assistant; no LLM, no Ray), on a free
127.0.0.1 port. Each client is a v2 WebSocket on its own session that presses tool buttons
(`action` frames: NextStep / FrontStep, alternating with Explode / Recover) one after another; the
latency of an update is the client's receipt time minus the frame's `t` (when the tool ran on the
bridge), so it covers scene building, the send queue and the socket. Then one client that stops
reading watches a session that a fast driver jumps between step 1 and the last step: its queue
coalesces the stale scenes; the benchmark counts them and checks that the utterance it asked for
still arrives and that its last scene is the session's final state.

    .venv/bin/python benchmarks/xr_bridge.py --quick   # 15 updates per client (about a minute)
    .venv/bin/python benchmarks/xr_bridge.py           # 60 updates per client

Targets: p99 < 100 ms at 8 clients, and the brick diff >= 10x smaller than the full GLB at step 20.
Writes runs/bench/xr_bridge-<time>.json; the last line is the headline.
Exit status 1 when a target is missed; `--no-enforce` (from `_common.add_enforce`) only reports.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
from _common import add_enforce, parser, save, verdict  # noqa: E402

V2 = ["lathe.xr.v2"]
SCRIPT = [[".", json.dumps({"action": "Final Answer", "action_input": "ok"})]]
CYCLE = [("NextStep", {}), ("Explode", {}), ("FrontStep", {}), ("Recover", {})]


async def client_run(url: str, n_updates: int, lat: list[float]) -> int:
    import websockets

    async with websockets.connect(url, subprotocols=V2, max_size=1 << 26) as ws:
        first = json.loads(await ws.recv())
        assert first["type"] == "scene"
        got = 0
        for k in range(n_updates):
            name, args = CYCLE[k % len(CYCLE)]
            await ws.send(json.dumps({"type": "action", "id": k, "name": name, "args": args}))
            seen_scene = seen_result = False
            while not (seen_scene and seen_result):
                f = json.loads(await ws.recv())
                if f["type"] == "scene":
                    lat.append((time.time() - f["t"]) * 1000)
                    seen_scene = True
                    got += 1
                elif f["type"] == "action_result":
                    seen_result = True
        return got


async def latency_phase(srv, n_clients: int, n_updates: int) -> dict:
    lat: list[float] = []
    t0 = time.perf_counter()
    counts = await asyncio.gather(*[client_run(srv.ws_url, n_updates, lat) for _ in range(n_clients)])
    wall = time.perf_counter() - t0
    a = np.array(lat)
    return {"clients": n_clients, "updates": int(sum(counts)), "p50_ms": float(np.percentile(a, 50)),
            "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max()), "updates_per_s": sum(counts) / wall}


async def slow_phase(srv, jumps: int) -> dict:
    """A watcher that stops reading while a driver jumps 1 <-> n on the same session."""
    import websockets

    bridge = srv.bridge
    n = bridge.assistant.manual.n_steps
    async with websockets.connect(srv.ws_url, subprotocols=V2, max_size=1 << 26) as driver:
        sid = json.loads(await driver.recv())["session"]
        # a tiny receive window, so the kernel's loopback buffers cannot absorb the backlog for it
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((srv.host, srv.port))
        async with websockets.connect(f"{srv.ws_url}?session={sid}", subprotocols=V2, max_size=1 << 26,
                                      max_queue=1, sock=sock) as slow:
            json.loads(await slow.recv())
            await slow.send(json.dumps({"type": "action", "id": "mine", "name": "GetCurrentStep"}))
            await asyncio.sleep(0.2)  # the watcher now stops reading
            for k in range(jumps):
                await driver.send(json.dumps({"type": "action", "id": k, "name": "GoToStep",
                                              "args": {"step": n if k % 2 == 0 else 1}}))
                while json.loads(await driver.recv())["type"] != "action_result":
                    pass
            dropped = max(c.queue.dropped for c in list(bridge.connections) if c.chat.session_id == sid)
            final_step = bridge.assistant.sessions[sid].sim.current_step
            # now read everything the watcher was sent
            frames, got_result, last_scene = 0, False, None
            while True:
                try:
                    f = json.loads(await asyncio.wait_for(slow.recv(), timeout=2.0))
                except asyncio.TimeoutError:
                    break
                frames += 1
                if f["type"] == "action_result" and f["id"] == "mine":
                    got_result = True
                elif f["type"] == "scene":
                    last_scene = f
    return {"jumps": jumps, "dropped": dropped, "frames_received": frames, "utterance_delivered": got_result,
            "last_scene_step": last_scene["state"]["current_step"] if last_scene else None,
            "final_step": final_step}


def glb_sizes(n_steps: int = 20) -> list[dict]:
    from lathe.data.lego import generate_manual
    from lathe.xr_bridge.scene import ManualScene

    scene = ManualScene(generate_manual(0, n_steps))
    rows, prev = [], None
    for k in range(1, n_steps + 1):
        v = scene.view_of_step(k)
        full = len(json.dumps(scene.full_frame(v)))
        diff = len(json.dumps(scene.diff_frame(prev, v))) if prev else full
        rows.append({"step": k, "bricks": len(v.visible), "glb_bytes": len(scene.glb(v)), "full_frame_bytes": full,
                     "diff_frame_bytes": diff, "ratio": full / diff})
        prev = v
    return rows


def main() -> int:
    p = add_enforce(parser(__doc__.splitlines()[0]))
    p.add_argument("--updates", type=int, default=None, help="tool calls per client")
    args = p.parse_args()
    n_updates = args.updates or (15 if args.quick else 60)
    from lathe.xr_bridge.bridge import BridgeConfig, BridgeServer, XRBridge

    t0 = time.perf_counter()
    sizes = glb_sizes(20)
    at20 = sizes[-1]
    print(f"GLB at step 20: {at20['bricks']} bricks, GLB {at20['glb_bytes']} B, full frame "
          f"{at20['full_frame_bytes']} B, diff frame {at20['diff_frame_bytes']} B ({at20['ratio']:.1f}x smaller)",
          flush=True)
    cfg = BridgeConfig.model_validate({"lego": {"llm": {"backend": "scripted", "script": SCRIPT},
                                                "manual_steps": 20, "max_sessions": 1024}})
    latency = {}
    with BridgeServer(XRBridge(cfg)) as srv:
        asyncio.run(latency_phase(srv, 1, 3))  # warm the mesh and GLB caches
        for n in (1, 8, 32):
            res = asyncio.run(latency_phase(srv, n, n_updates))
            latency[n] = res
            print(f"{n:>3} clients: p50 {res['p50_ms']:6.1f} ms  p99 {res['p99_ms']:6.1f} ms  max {res['max_ms']:6.1f} ms"
                  f"  ({res['updates']} updates, {res['updates_per_s']:.0f}/s)", flush=True)
        slow = asyncio.run(slow_phase(srv, 80 if args.quick else 160))
    print(f"slow client: {slow['dropped']} stale scene frames dropped of {slow['jumps']} updates; utterance "
          f"delivered: {slow['utterance_delivered']}; last scene step {slow['last_scene_step']} "
          f"(final {slow['final_step']})", flush=True)
    ok_latency = latency[8]["p99_ms"] < 100
    ok_diff = at20["ratio"] >= 10
    ok_slow = slow["utterance_delivered"] and slow["last_scene_step"] == slow["final_step"]
    out = {"updates_per_client": n_updates, "cpus": os.cpu_count(), "latency": latency, "sizes": sizes,
           "slow_client": slow, "targets": {"p99_8_clients_ms<100": ok_latency, "diff_10x_at_step_20": ok_diff,
                                            "slow_client_consistent": ok_slow},
           "wall_s": time.perf_counter() - t0}
    print(f"json: {save('xr_bridge', args.out, out)}")
    print(f"xr_bridge: p99 {latency[8]['p99_ms']:.1f} ms at 8 clients (target < 100), "
          f"{latency[1]['p99_ms']:.1f} ms at 1, {latency[32]['p99_ms']:.1f} ms at 32; diff "
          f"{at20['ratio']:.1f}x smaller than the full GLB at step 20 (target >= 10x); "
          f"slow client dropped {slow['dropped']} stale scene frames, kept its utterance: {slow['utterance_delivered']}")
    return verdict({"p99 < 100 ms at 8 clients": ok_latency, "diff frame >= 10x smaller than the GLB at step 20": ok_diff,
                    "a slow client keeps its utterance and ends on the final scene": ok_slow}, args.no_enforce)


if __name__ == "__main__":
    sys.exit(main())
