"""Load test of the inference service: `selfsup serve` in its own process on 127.0.0.1, driven from this one.

    python benchmarks/serve_load.py [--model models/onnx/intent] [--texts data/intent/test.csv] [--quick]

Single-text intent requests (texts from the test split), batching on (params.yaml's serve settings) and off
(serve.max_batch_size=1), each on a fresh server:

* closed loop at concurrency 1, 8 and 64: each of N connections sends its next request as soon as the previous
  answer arrives (requests/s and p50/p99 latency measured by the client);
* open loop: requests arrive at a fixed rate (Poisson, ``--rate``, default 500/s) whatever the answers do, at most
  64 in flight — the "can it serve 500 req/s within 50 ms" question. In a closed loop latency follows from
  throughput (Little's law: mean latency = concurrency / throughput, so 64 clients at 500 req/s wait 128 ms on
  average whatever the server does); an open loop at the target rate is what measures the latency users would see.

The ceiling to compare with: raw onnxruntime throughput of the same model at batch 64, measured in this run (no
HTTP, no JSON). Client and server share the machine's cores; the client is a minimal asyncio HTTP/1.1 keep-alive
client, so it costs far less CPU than the server. Ends with one JSON line: rps and p99_ms (closed loop,
concurrency 64, batching on), rps_unbatched, open-loop p99, the ceiling, device and date.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ a lean client


class Connection:
    """One keep-alive HTTP/1.1 connection; ``post`` returns (status, seconds)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int):
        self.reader, self.writer, self.host = reader, writer, f"{host}:{port}"

    @classmethod
    async def open(cls, host: str, port: int) -> "Connection":
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, host, port)

    async def post(self, path: str, body: bytes) -> tuple[int, float]:
        started = time.perf_counter()
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await self.reader.readexactly(length)
        return status, time.perf_counter() - started

    def close(self) -> None:
        self.writer.close()


def _bodies(texts: list[str]) -> list[bytes]:
    return [json.dumps({"text": t}).encode() for t in texts]


async def closed_loop(port: int, bodies: list[bytes], concurrency: int, seconds: float, warmup: float = 0.5) -> dict:
    connections = [await Connection.open("127.0.0.1", port) for _ in range(concurrency)]
    latencies, errors = [], 0
    measuring_from = time.perf_counter() + warmup
    stop_at = measuring_from + seconds

    async def client(conn: Connection, offset: int) -> None:
        nonlocal errors
        i = offset
        while time.perf_counter() < stop_at:
            status, took = await conn.post("/v1/intent", bodies[i % len(bodies)])
            i += concurrency
            if time.perf_counter() >= measuring_from:
                latencies.append(took)
                errors += status != 200

    await asyncio.gather(*(client(c, k) for k, c in enumerate(connections)))
    for c in connections:
        c.close()
    return _summary(latencies, errors, seconds)


async def open_loop(port: int, bodies: list[bytes], rate: float, seconds: float, max_in_flight: int = 64) -> dict:
    """Poisson arrivals at ``rate``/s; a request that finds all ``max_in_flight`` connections busy waits for one
    (its latency counts from its arrival, so queueing in the client is not hidden)."""
    pool: asyncio.Queue = asyncio.Queue()
    for _ in range(max_in_flight):
        pool.put_nowait(await Connection.open("127.0.0.1", port))
    latencies, errors, tasks = [], 0, []
    rng = random.Random(0)

    async def one(body: bytes, arrived: float) -> None:
        nonlocal errors
        conn = await pool.get()
        status, _ = await conn.post("/v1/intent", body)
        latencies.append(time.perf_counter() - arrived)
        errors += status != 200
        pool.put_nowait(conn)

    start = time.perf_counter()
    next_at, i = start, 0
    while next_at < start + seconds:
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(bodies[i % len(bodies)], next_at)))
        i += 1
        next_at += rng.expovariate(rate)
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    while not pool.empty():
        pool.get_nowait().close()
    return {**_summary(latencies, errors, elapsed), "offered_rps": rate}


def _summary(latencies: list[float], errors: int, seconds: float) -> dict:
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies), "errors": errors, "rps": len(latencies) / seconds,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


# ------------------------------------------------------------------------------------------------ the server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`selfsup serve --model intent=DIR` in a child process, on a free port, until the ``with`` block ends."""

    def __init__(self, model: Path, overrides: list[str]):
        self.port = _free_port()
        self.command = [sys.executable, "-m", "selfsup.cli", "serve", "--port", str(self.port), "--model",
                        f"intent={model}", "serve.poll_seconds=0", *overrides]

    def __enter__(self) -> "Server":
        self.process = subprocess.Popen(self.command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited: {self.process.stderr.read().decode()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("the service did not start within 60 s")

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def ceiling(model: Path, texts: list[str], threads: int, seconds: float) -> float:
    """Texts/s of the bare onnxruntime session at batch 64 (tokenized once, outside the timing)."""
    from selfsup.serve.runtime import TextModel

    runtime = TextModel(model, threads)
    batches = [runtime.prepare(texts[i : i + 64]) for i in range(0, len(texts) - 63, 64)] or [runtime.prepare(texts)]
    runtime.run(batches[0])
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        batch = batches[done % len(batches)]
        runtime.run(batch)
        done += 1
    return sum(len(batches[k % len(batches)]) for k in range(done)) / (time.perf_counter() - started)


def read_texts(path: Path) -> list[str]:
    from selfsup.text.data import read_labelled

    return [text for text in read_labelled(path)[0] if text.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=REPO / "models/onnx/intent", help="exported intent model")
    parser.add_argument("--texts", type=Path, default=REPO / "data/intent/test.csv", help="CSV with a text column")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per setting")
    parser.add_argument("--rate", type=float, default=500.0, help="open-loop arrival rate (requests/s)")
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="serve.intra_op_threads values to compare (default: params.yaml's)")
    parser.add_argument("--quick", action="store_true", help="1 s per setting, concurrency 1 and 8: a smoke test")
    parser.add_argument("overrides", nargs="*", help="params.yaml overrides for the server, e.g. serve.max_wait_ms=5")
    args = parser.parse_args()
    for needed, what in ((args.model / "model.onnx", "an exported model (make run)"), (args.texts, "the test split")):
        if not needed.exists():
            sys.exit(f"{needed} is missing: {what}")
    texts = read_texts(args.texts)
    bodies = _bodies(texts)
    seconds = 1.0 if args.quick else args.seconds
    levels = (1, 8) if args.quick else (1, 8, 64)
    from selfsup.config import load_config

    serve_cfg = load_config(REPO / "params.yaml", args.overrides).serve
    threads = args.threads or [serve_cfg.intra_op_threads]

    rows = []
    for batching in (True, False):
        for n_threads in threads if batching else threads[:1]:
            overrides = [*args.overrides, f"serve.intra_op_threads={n_threads}"]
            if not batching:
                overrides += ["serve.max_batch_size=1", "serve.max_wait_ms=0"]
            with Server(args.model, overrides) as server:
                for concurrency in levels:
                    result = asyncio.run(closed_loop(server.port, bodies, concurrency, seconds))
                    rows.append({"mode": "closed", "batching": batching, "threads": n_threads,
                                 "concurrency": concurrency, **result})
                    print(_row(rows[-1]), flush=True)
                if not args.quick:
                    result = asyncio.run(open_loop(server.port, bodies, args.rate, seconds))
                    rows.append({"mode": f"open {args.rate:.0f}/s", "batching": batching, "threads": n_threads,
                                 "concurrency": 64, **result})
                    print(_row(rows[-1]), flush=True)
    top = ceiling(args.model, texts, threads[0], min(seconds, 3.0))
    print(f"\nceiling: bare onnxruntime at batch 64, {threads[0]} thread(s): {top:,.0f} texts/s")

    def pick(mode: str, batching: bool, concurrency: int) -> dict:
        found = [r for r in rows if r["mode"].startswith(mode) and r["batching"] is batching
                 and r["concurrency"] == concurrency and r["threads"] == threads[0]]
        return found[0] if found else {}

    c = levels[-1]
    best = pick("closed", True, c)
    summary = {"benchmark": "serve_load", "concurrency": c, "rps": round(best["rps"], 1),
               "p99_ms": round(best["p99_ms"], 2), "rps_unbatched": round(pick("closed", False, c)["rps"], 1),
               "open_loop_rate": args.rate if not args.quick else None,
               "open_loop_p99_ms": round(pick("open", True, 64)["p99_ms"], 2) if not args.quick else None,
               "open_loop_p99_ms_unbatched": round(pick("open", False, 64)["p99_ms"], 2) if not args.quick else None,
               "ceiling_texts_per_s": round(top, 1), "ratio_rps_to_ceiling": round(best["rps"] / top, 3),
               "errors": sum(r["errors"] for r in rows), "device": f"{platform.processor() or platform.machine()}, "
               f"{os.cpu_count()} cores", "date": datetime.date.today().isoformat(), "quick": args.quick}
    print(json.dumps(summary))


def _row(r: dict) -> str:
    return (f"{r['mode']:>11}  batching {'on ' if r['batching'] else 'off'}  threads {r['threads']}  "
            f"concurrency {r['concurrency']:>3}: {r['rps']:7.0f} req/s  p50 {r['p50_ms']:6.1f} ms  "
            f"p99 {r['p99_ms']:6.1f} ms  errors {r['errors']}")


if __name__ == "__main__":
    main()
