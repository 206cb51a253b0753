"""(e) Prefect's cost: overhead per input against processing time, and start-up latency.

Part 1, overhead per input. The same 2048x2048x3 scenes are segmented by the same model
(a U-Net/resnet18 model FILE, 6 classes, patch 512, overlap 0.25, gaussian) twice in one
process: directly with ``segflow.segment`` and as one ``segment_batch`` flow run (one
Prefect task per input). Prefect's overhead per input is (flow - direct) / inputs, and
must be <= 5 % of the per-input processing time. The temporary Prefect server is started
before the timing (its start-up is part 2's subject) and reported apart.

Part 2, start-up. Wall time from launching a command to the first output chunk recorded
as written (``_segflow/done``), with a near-free model so that start-up dominates:
``segflow run`` (whatever it runs), ``run_flow`` in a fresh process with no Prefect
server configured (temporary server: what ``segflow run`` does once it starts flows),
the same against an already running server (``PREFECT_API_URL``), and the library alone.

    uv run python -m benchmarks.bench_prefect [--size 2048] [--inputs 2] [--model unet|pixel]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import torch

from benchmarks.common import Check, near_free_model, report, write_geotiff
from segflow.models import LoadedModel, create_model, save_model
from segflow.models.meta import ClassInfo, ModelMeta, Normalization

TARGET_OVERHEAD = 0.05  # of the per-input processing time
REPO = Path(__file__).resolve().parents[1]


def unet_file(path: Path) -> Path:
    torch.manual_seed(0)
    module = create_model("unet", encoder="resnet18", in_channels=3, classes=6).eval()
    meta = ModelMeta(
        arch="unet",
        arch_kwargs={"encoder": "resnet18"},
        in_channels=3,
        classes=tuple(ClassInfo(name=f"c{i}") for i in range(6)),
        normalization=Normalization(mean=(128.0,) * 3, std=(64.0,) * 3),
        output_stride=32,
    )
    save_model(module, meta, path)
    return path


def pixel_file(path: Path) -> Path:
    loaded = near_free_model()
    save_model(loaded.module, loaded.meta, path)
    return path


# --- part 1 -------------------------------------------------------------------------------------


def overhead(
    tmp: Path, model_path: Path, scenes: list[Path], options: dict[str, Any]
) -> dict[str, float]:
    from prefect.server.api.server import SubprocessASGIServer

    from flows.segment import loaded_model, segment_batch
    from segflow import segment

    started = time.perf_counter()
    server = SubprocessASGIServer()
    server.start()
    server_seconds = time.perf_counter() - started
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        model: LoadedModel = loaded_model(model_path)  # loaded once, shared by both modes
        segment(scenes[0], model, tmp / "warm.zarr", **options)  # torch / reader warm-up
        direct: list[float] = []
        flow: list[float] = []
        for rep in range(2):  # alternate so drift and caches hit both modes alike
            t0 = time.perf_counter()
            for i, scene in enumerate(scenes):
                segment(scene, model, tmp / f"direct{rep}" / f"{i}.zarr", **options)
            direct.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            state = segment_batch(
                [str(s) for s in scenes],
                str(tmp / f"flow{rep}"),
                model=str(model_path),
                options=options,
                return_state=True,
            )
            flow.append(time.perf_counter() - t0)
            assert state.is_completed(), state.message
        single: list[float] = []
        from flows.segment import segment as segment_flow

        for rep in range(2):
            t0 = time.perf_counter()
            segment_flow(
                str(scenes[0]), str(tmp / f"single{rep}.zarr"), model=str(model_path),
                options=options,
            )  # fmt: skip
            single.append(time.perf_counter() - t0)
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        _stop(server)
    n = len(scenes)
    per_input = min(direct) / n
    return {
        "server_start_s": server_seconds,
        "direct_s": min(direct),
        "flow_s": min(flow),
        "per_input_s": per_input,
        "overhead_per_input_s": (min(flow) - min(direct)) / n,
        "single_flow_s": min(single),
    }


def _stop(server: Any) -> None:
    """Send the queued run logs before the server goes away, then stop it."""
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=5)
    server.stop()


# --- part 2 -------------------------------------------------------------------------------------


def time_to_first_chunk(cmd: list[str], store: Path, env: dict[str, str]) -> dict[str, float]:
    """Launch ``cmd`` and poll the store's completion record for its first chunk."""
    done = store / "_segflow" / "done" / "c"
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    first = None
    while proc.poll() is None:
        if first is None and done.is_dir() and any(p.is_file() for p in done.rglob("*")):
            first = time.perf_counter() - t0
        time.sleep(0.02)
    total = time.perf_counter() - t0
    output = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed ({proc.returncode}):\n{output[-2000:]}")
    if first is None:  # finished between two polls
        first = total
    return {"first_chunk_s": first, "total_s": total, "flow": float("Flow run" in output)}


def startup(tmp: Path, scene: Path, model: Path) -> dict[str, dict[str, float]]:
    from prefect.server.api.server import SubprocessASGIServer

    base_env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    base_env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    opts = ["--device", "cpu", "--chunk-size", "256", "--no-progress"]
    segflow_bin = str(Path(sys.executable).with_name("segflow"))
    run_flow_code = (
        "import sys; from flows.segment import run_flow; from segflow.options import RunOptions; "
        "run_flow([sys.argv[1]], sys.argv[2], sys.argv[3], RunOptions(device='cpu', chunk_size=256))"
    )
    library_code = (
        "import sys; from segflow import segment; "
        "segment(sys.argv[1], sys.argv[2], sys.argv[3], device='cpu', chunk_size=256)"
    )
    results: dict[str, dict[str, float]] = {}

    def case(name: str, cmd: list[str], store: Path, env: dict[str, str]) -> None:
        results[name] = time_to_first_chunk(cmd, store, env)

    s = tmp / "startup"
    case("segflow run", [segflow_bin, "run", str(scene), "-m", str(model), "-o",
                         str(s / "cli.zarr"), *opts], s / "cli.zarr", base_env)  # fmt: skip
    case("run_flow, temporary server",
         [sys.executable, "-c", run_flow_code, str(scene), str(model), str(s / "eph.zarr")],
         s / "eph.zarr", base_env)  # fmt: skip
    server = SubprocessASGIServer()
    server.start()
    try:
        env = {**base_env, "PREFECT_API_URL": server.api_url}
        case("run_flow, running server",
             [sys.executable, "-c", run_flow_code, str(scene), str(model), str(s / "srv.zarr")],
             s / "srv.zarr", env)  # fmt: skip
        case("segflow run, running server", [segflow_bin, "run", str(scene), "-m", str(model),
             "-o", str(s / "cli-srv.zarr"), *opts], s / "cli-srv.zarr", env)  # fmt: skip
    finally:
        _stop(server)
    case("library only (segflow.segment)",
         [sys.executable, "-c", library_code, str(scene), str(model), str(s / "lib.zarr")],
         s / "lib.zarr", base_env)  # fmt: skip
    return results


def main() -> bool:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--inputs", type=int, default=2)
    parser.add_argument("--model", choices=["unet", "pixel"], default="unet")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-startup", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        scenes = [
            write_geotiff(tmp / f"scene{i}.tif", args.size, seed=i) for i in range(args.inputs)
        ]
        model = unet_file(tmp / "unet.safetensors") if args.model == "unet" else (
            pixel_file(tmp / "pixel.safetensors"))  # fmt: skip
        options = {"device": args.device, "patch_size": 512, "overlap": 0.25, "blend": "gaussian"}
        o = overhead(tmp, model, scenes, options)
        share = o["overhead_per_input_s"] / o["per_input_s"]
        figures = {
            "scene": f"{args.size}x{args.size}x3 uint8, {args.inputs} inputs, model {args.model}",
            "temporary server start (s)": f"{o['server_start_s']:.2f}",
            "direct segflow.segment, all inputs (s)": f"{o['direct_s']:.2f}",
            "segment_batch flow, all inputs (s)": f"{o['flow_s']:.2f}",
            "processing per input (s)": f"{o['per_input_s']:.2f}",
            "Prefect overhead per input (s)": f"{o['overhead_per_input_s']:.3f}",
            "one-input segment flow (s)": f"{o['single_flow_s']:.2f}",
        }
        checks = [
            Check(
                "Prefect overhead per input",
                100 * share,
                "%",
                f"<= {100 * TARGET_OVERHEAD:.0f} %",
                share <= TARGET_OVERHEAD,
            ),
        ]
        if not args.skip_startup:
            small = write_geotiff(tmp / "small.tif", 2048, seed=9)
            for label, r in startup(tmp, small, pixel_file(tmp / "startup.safetensors")).items():
                via = "flow run" if r["flow"] else "no flow run"
                figures[f"to first chunk: {label}"] = (
                    f"{r['first_chunk_s']:.2f} s (done in {r['total_s']:.2f} s, {via})"
                )
    return report("Prefect: overhead per input and start-up (bench e)", figures, checks)


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
