"""A bounded load test of ``unetseg serve`` on loopback.

Starts the server as a separate process, sends ``POST /predict`` from a fixed number of
concurrent clients for a fixed time, and reports latency percentiles, requests per second,
errors (deliberate 503s from the bounded queue are counted apart) and the server's resident
memory before and after.

    python benchmarks/serve_load.py --model RUN/best.safetensors --clients 8 --duration 60
    python benchmarks/serve_load.py --duration 20                 # random width-16 U-Net

A client that gets a 503 waits ``--backoff`` seconds and tries again. Exit status 1 when any
request failed other than with a 503.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ISBI_IMAGE = ROOT.parent / "shared" / "data" / "isbi2012" / "test" / "images" / "00.png"


def rss_mib(pid: int) -> float:
    """Resident set size of a process in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_server(model: Path, port: int, queue_size: int) -> subprocess.Popen[bytes]:
    import httpx

    cmd = [sys.executable, "-m", "unetseg.cli", "serve", str(model), "--port", str(port),
           "--queue-size", str(queue_size), "--device", "cpu"]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited: {server.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("server did not start within 120 s")


def _client(url: str, data: bytes, until: float, backoff: float, out: list[Any]) -> None:
    import httpx

    with httpx.Client(timeout=120) as client:
        while time.monotonic() < until:
            started = time.perf_counter()
            try:
                response = client.post(url, files={"file": ("image.png", data, "image/png")})
                out.append((response.status_code, time.perf_counter() - started))
                if response.status_code == 503:
                    time.sleep(backoff)
            except httpx.HTTPError as exc:
                out.append((type(exc).__name__, time.perf_counter() - started))


def _load(url: str, data: bytes, clients: int, duration: float,
          backoff: float) -> tuple[list[Any], float]:
    results: list[list[Any]] = [[] for _ in range(clients)]
    until = time.monotonic() + duration
    threads = [threading.Thread(target=_client, args=(url, data, until, backoff, results[i]))
               for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for rs in results for r in rs], time.perf_counter() - started


def _percentile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def summarize(results: list[Any], seconds: float) -> dict[str, Any]:
    """Counts by status, latency percentiles of successful requests, throughput."""
    ok = [latency for status, latency in results if status == 200]
    statuses = Counter(str(status) for status, _ in results)
    errors = {k: v for k, v in statuses.items() if k not in ("200", "503")}
    return {
        "requests": len(results), "ok": len(ok), "rejected_503": statuses.get("503", 0),
        "errors": errors, "seconds": round(seconds, 2),
        "ok_per_s": round(len(ok) / seconds, 2),
        "p50_ms": round(1000 * _percentile(ok, 50), 1),
        "p99_ms": round(1000 * _percentile(ok, 99), 1),
    }


def _model(args: argparse.Namespace, folder: Path) -> Path:
    if args.model:
        return Path(args.model)
    import torch

    from unetseg.data.classes import ClassTable
    from unetseg.data.normalize import ChannelStats
    from unetseg.model import UNet
    from unetseg.modelfile import ModelCard, save_model

    torch.manual_seed(0)
    net = UNet(1, 2, depth=4, width=args.width)
    card = ModelCard(net.config, ClassTable.from_values((0, 255), ("membrane", "cell")),
                     ChannelStats((0.5,), (0.17,)))
    save_model(folder / "model.safetensors", net, card)
    return folder / "model.safetensors"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model file (default: a random U-Net of --width)")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--image", help="image to upload (default: ISBI test 00 or a demo"
                        " image)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    parser.add_argument("--queue-size", type=int, default=4, help="server's --queue-size")
    parser.add_argument("--backoff", type=float, default=0.05, help="wait after a 503")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of load before"
                        " the measured run (not counted)")
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args(argv)
    from unetseg.api import demo_data_root

    image = Path(args.image) if args.image else (
        ISBI_IMAGE if ISBI_IMAGE.exists() else demo_data_root() / "images" / "00.png")
    data = image.read_bytes()
    port = _free_port()
    url = f"http://127.0.0.1:{port}/predict"
    with tempfile.TemporaryDirectory() as tmp:
        server = _start_server(_model(args, Path(tmp)), port, args.queue_size)
        try:
            rss = {"after_start": rss_mib(server.pid)}
            # warm-up at full concurrency: buffers for as many images as can be in flight
            _load(url, data, args.clients, duration=args.warmup, backoff=args.backoff)
            rss["after_warmup"] = rss_mib(server.pid)
            results, seconds = _load(url, data, args.clients, args.duration, args.backoff)
            rss["after_load"] = rss_mib(server.pid)
            time.sleep(2.0)
            rss["after_idle_2s"] = rss_mib(server.pid)
        finally:
            server.terminate()
            server.wait(30)
    report = {"image": image.name, "clients": args.clients, "duration_s": args.duration,
              "queue_size": args.queue_size, **summarize(results, seconds),
              "rss_mib": {k: round(v, 1) for k, v in rss.items()},
              "rss_growth_after_warmup_mib": round(rss["after_idle_2s"] - rss["after_warmup"], 1)}
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
