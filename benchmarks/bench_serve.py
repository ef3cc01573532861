"""Serving throughput: `protsae serve` started as a user does, driven over HTTP by 16 clients.

For each worker count and with the response cache on (warm) and off (every request rendered),
starts ``python -m trainer.cli serve --workers N`` on 127.0.0.1, then drives each route with an
asyncio httpx load generator (keep-alive connections, ``Accept-Encoding: gzip`` as browsers
send, bodies read raw so the generator spends no time decompressing). Each route runs until
``--requests`` requests or ``--seconds`` have passed, whichever comes first; ``/healthz`` is
measured before and after the routes in the same server run and each route's req/s is shown
beside it as a ratio. Routes: home, a feature list page, the heaviest feature page (largest
HTML of the five features with the most per-residue values), a protein page, a GO page, search
and the feature API. The load generator shares the machine's cores with the server.

    PYTHONPATH=. python benchmarks/bench_serve.py [--database-url URL] [--workers 1 2]
        [--clients 16] [--requests 1500] [--seconds 6] [--port 8107]

Prints one table per (workers, cache) and each worker's resident memory after the run. "CPU ms"
is the server's CPU time per request (all its processes): on a shared machine req/s follows the
load of others, while CPU ms per request is what the server itself spends; with the load
generator's own CPU per request ("client ms") they give the capacity of the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import psutil
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.settings import PROJECT_ROOT, Settings
from app.store.engine import make_engine
from app.store.schema import Feature, GoEnrichment, Protein, Run, Sae, TopExample

HOST = "127.0.0.1"


@dataclass
class Result:
    name: str
    path: str
    n: int
    seconds: float
    p50_ms: float
    p95_ms: float
    wire_bytes: float
    errors: int
    cpu_ms: float  # the server's CPU time (all its processes) per request: what contention hides
    client_cpu_ms: float  # the load generator's own CPU time per request (it shares the cores)

    @property
    def rps(self) -> float:
        return self.n / self.seconds if self.seconds else 0.0

    def capacity(self, cores: int) -> float:
        """Requests per second the cores could serve with nothing else on them: every core busy
        with the server or the load generator, at the CPU each spent per request in this run."""
        per_request = self.cpu_ms + self.client_cpu_ms
        return 1000 * cores / per_request if per_request else 0.0


def pick_routes(url: str, base: str) -> list[tuple[str, str]]:
    """The routes to drive, chosen from the store; the heaviest feature by rendered size."""
    engine = make_engine(url)
    with Session(engine) as session:
        published = select(Sae.id).join(Run).where(Run.status == "published")
        sae_id = session.scalars(published.order_by(Sae.id).limit(1)).one()
        heavy = session.execute(
            select(TopExample.feature_id, func.sum(func.length(TopExample.residue_values)))
            .join(Feature, Feature.id == TopExample.feature_id)
            .where(Feature.sae_id.in_(published))
            .group_by(TopExample.feature_id)
            .order_by(func.sum(func.length(TopExample.residue_values)).desc())
            .limit(5)
        ).all()
        go_id = session.scalars(
            select(GoEnrichment.go_id)
            .group_by(GoEnrichment.go_id)
            .order_by(func.count().desc(), GoEnrichment.go_id)
            .limit(1)
        ).first()
        top = session.execute(
            select(TopExample.protein_id).where(TopExample.feature_id == heavy[0][0]).limit(1)
        ).scalar_one()
        accession = session.get(Protein, top).accession  # type: ignore[union-attr]
        if go_id is None:  # no enrichment stored: a term the protein is annotated with
            protein = session.get(Protein, top)
            go_id = next(t for t in (protein.go_bp or protein.go_mf or "").split(";") if t)  # type: ignore[union-attr]
    engine.dispose()
    sizes = {fid: len(httpx.get(f"{base}/features/{fid}", headers={"Accept-Encoding": "identity"}).content) for fid, _ in heavy}  # fmt: skip
    heaviest = max(sizes, key=lambda fid: sizes[fid])
    print(f"heaviest feature page: /features/{heaviest}, {sizes[heaviest] / 1024:.1f} KiB of HTML")
    return [
        ("home", "/"),
        ("feature list", f"/saes/{sae_id}/features"),
        ("heaviest feature", f"/features/{heaviest}"),
        ("protein", f"/proteins/{accession}"),
        ("GO term", f"/go/{go_id}"),
        ("search", "/search?q=kinase"),
        ("feature API", f"/api/v1/features/{heaviest}"),
    ]


async def drive(
    base: str, name: str, path: str, clients: int, requests: int, seconds: float,
    cpu: Callable[[], float],
) -> Result:  # fmt: skip
    """``clients`` keep-alive connections requesting ``path`` until the count or the time is spent;
    ``cpu()`` reads the server's CPU seconds."""
    latencies: list[float] = []
    wire = 0
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=base, limits=limits, headers={"Accept-Encoding": "gzip"}, timeout=60
    ) as client:
        for _ in range(2):  # warm-up: connections, the cache, the database's pages
            await asyncio.gather(*(client.get(path) for _ in range(clients)))
        cpu_start = cpu()
        client_start = time.process_time()
        start = time.perf_counter()
        deadline = start + seconds
        issued = 0

        async def one_client() -> None:
            nonlocal issued, wire, errors
            while issued < requests and time.perf_counter() < deadline:
                issued += 1
                t0 = time.perf_counter()
                try:
                    async with client.stream("GET", path) as response:
                        async for chunk in response.aiter_raw():
                            wire += len(chunk)
                        errors += response.status_code != 200
                except httpx.HTTPError:  # a timeout under load: counted, not timed
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(one_client() for _ in range(clients)))
        elapsed = time.perf_counter() - start
        cpu_spent = cpu() - cpu_start
        client_spent = time.process_time() - client_start
    latencies.sort()
    return Result(
        name, path, len(latencies), elapsed,
        1000 * statistics.median(latencies), 1000 * latencies[int(0.95 * (len(latencies) - 1))],
        wire / max(len(latencies), 1), errors, 1000 * cpu_spent / max(len(latencies), 1),
        1000 * client_spent / max(len(latencies), 1),
    )  # fmt: skip


def drive_ab(
    base: str, name: str, path: str, clients: int, requests: int, seconds: float,
    cpu: Callable[[], float],
) -> Result:  # fmt: skip
    """The same measurement with ApacheBench (``ab -k``, Debian's apache2-utils): a C load
    generator spends a few microseconds per request, so the cores are left to the server and
    the latencies are the server's rather than those of a Python client's event loop."""
    url = f"{base}{path}"
    common = ["ab", "-q", "-k", "-c", str(clients), "-H", "Accept-Encoding: gzip"]
    subprocess.run([*common, "-n", str(2 * clients), url], capture_output=True, check=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_start = cpu()
    out = subprocess.run(
        [*common, "-t", str(seconds), "-n", str(requests), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    cpu_spent = cpu() - cpu_start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    def field(label: str) -> float:
        match = re.search(rf"^{re.escape(label)}:\s+([\d.]+)", out, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"ab printed no {label!r}:\n{out}")
        return float(match.group(1))

    def percentile(p: int) -> float:
        match = re.search(rf"^\s+{p}%\s+(\d+)", out, re.MULTILINE)
        return float(match.group(1)) if match else float("nan")

    n = int(field("Complete requests"))
    failed = int(field("Failed requests"))
    non_2xx = re.search(r"^Non-2xx responses:\s+(\d+)", out, re.MULTILINE)
    errors = failed + (int(non_2xx.group(1)) if non_2xx else 0)
    return Result(
        name, path, n, field("Time taken for tests"), percentile(50), percentile(95),
        field("Total transferred") / max(n, 1), errors, 1000 * cpu_spent / max(n, 1),
        1000 * client / max(n, 1),
    )  # fmt: skip


Limits = tuple[int, int, float, Callable[[], float]]


def measure(generator: str, base: str, name: str, path: str, limits: Limits) -> Result:
    """One route driven by the chosen load generator."""
    if generator == "ab":
        return drive_ab(base, name, path, *limits)
    return asyncio.run(drive(base, name, path, *limits))


@contextmanager
def server(url: str, port: int, workers: int, cache: bool) -> Iterator[tuple[str, psutil.Process]]:
    python_path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": python_path, "PROTSAE_DATABASE_URL": url,
           "PROTSAE_CACHE": "true" if cache else "false"}  # fmt: skip
    command = [sys.executable, "-m", "trainer.cli", "serve", "--host", HOST, "--port", str(port),
               "--workers", str(workers), "--no-access-log"]  # fmt: skip
    proc = subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, stderr=subprocess.DEVNULL)
    base = f"http://{HOST}:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise RuntimeError("server did not start")
        time.sleep(1.0 if workers > 1 else 0)  # let every worker finish importing
        yield base, psutil.Process(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def cpu_seconds(root: psutil.Process) -> Callable[[], float]:
    """A reader of the CPU seconds (user + system) of the server and all its workers."""

    def read() -> float:
        total = 0.0
        for process in [root, *root.children(recursive=True)]:
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    return read


def worker_rss_mib(root: psutil.Process) -> list[float]:
    """Resident memory of each uvicorn worker (the server process itself when it runs one)."""
    workers = [p for p in root.children() if "spawn_main" in " ".join(p.cmdline())] or [root]
    return [p.memory_info().rss / (1 << 20) for p in workers]


def encode_in_every_worker(url: str, base: str, workers: int) -> str:
    """POST /api/v1/encode concurrently, 4 per worker, so each worker loads its models."""
    engine = make_engine(url)
    with Session(engine) as session:
        sae_id = session.scalars(
            select(Sae.id).join(Run).where(Run.status == "published", Sae.kind != "neurons")
            .order_by(Sae.id).limit(1)
        ).first()  # fmt: skip
        sequence = session.scalars(select(Protein.sequence).order_by(Protein.id).limit(1)).one()
    engine.dispose()
    if sae_id is None:
        return "no trained dictionary to encode with"
    body = {"sae_id": sae_id, "sequences": [sequence[:400]]}

    async def post_all() -> list[int]:
        async with httpx.AsyncClient(base_url=base, timeout=120) as client:
            answers = await asyncio.gather(
                *(client.post("/api/v1/encode", json=body) for _ in range(4 * workers))
            )
        return [a.status_code for a in answers]

    codes = asyncio.run(post_all())
    return f"/api/v1/encode with dictionary {sae_id}: HTTP {sorted(set(codes))}"


def report(results: list[Result], health: float, title: str) -> None:
    print(f"\n{title}   (/healthz {health:.0f} req/s, mean of before and after)")
    cores = os.cpu_count() or 1
    print(f"{'route':<18}{'req/s':>8}{'× healthz':>11}{'p50 ms':>9}{'p95 ms':>9}{'CPU ms':>8}"
          f"{'client ms':>10}{'capacity':>10}{'KiB/resp':>10}{'n':>7}  path")  # fmt: skip
    for r in results:
        err = f"  {r.errors} errors" if r.errors else ""
        print(f"{r.name:<18}{r.rps:>8.0f}{r.rps / health:>11.2f}{r.p50_ms:>9.1f}{r.p95_ms:>9.1f}{r.cpu_ms:>8.2f}"
              f"{r.client_cpu_ms:>10.2f}{r.capacity(cores):>10.0f}"
              f"{r.wire_bytes / 1024:>10.1f}{r.n:>7}  {r.path}{err}")  # fmt: skip
    print(
        f"CPU ms: the server's CPU per request (all workers); client ms: the load generator's; "
        f"capacity: {cores} cores' req/s at those costs with nothing else running"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", default=Settings().sqlalchemy_url)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cache", choices=["on", "off", "both"], default="both")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=1500, help="per route (upper bound)")
    parser.add_argument("--seconds", type=float, default=6.0, help="per route (upper bound)")
    parser.add_argument("--port", type=int, default=8107)
    parser.add_argument(
        "--generator",
        choices=["httpx", "ab"],
        default="httpx",
        help="the load generator: an asyncio httpx loop in this process, or ApacheBench "
        "(apt-get install apache2-utils), which leaves the cores to the server",
    )
    parser.add_argument("--routes", nargs="*", help="only these (e.g. 'feature API')")
    parser.add_argument(
        "--encode", action="store_true", help="then encode in each worker, and report its memory"
    )
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"store {make_engine(args.database_url).url.render_as_string(hide_password=True)}; "
          f"{os.cpu_count()} cores; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")  # fmt: skip
    modes = {"on": [True], "off": [False], "both": [True, False]}[args.cache]
    routes: list[tuple[str, str]] | None = None
    for workers in args.workers:
        for cache in modes:
            with server(args.database_url, args.port, workers, cache) as (base, root):
                routes = routes or [
                    r for r in pick_routes(args.database_url, base)
                    if not args.routes or r[0] in args.routes
                ]  # fmt: skip
                limits: Limits = (args.clients, args.requests, args.seconds, cpu_seconds(root))

                before = measure(args.generator, base, "healthz", "/healthz", limits)
                results = [measure(args.generator, base, n, p, limits) for n, p in routes]
                after = measure(args.generator, base, "healthz", "/healthz", limits)
                health = (before.rps + after.rps) / 2
                title = f"{workers} worker{'s' if workers > 1 else ''}, cache {'on (warm)' if cache else 'off (cold)'}"
                report([before, *results, after], health, title)
                rss = ", ".join(f"{m:.0f}" for m in worker_rss_mib(root))
                print(f"resident memory per worker after the run: {rss} MiB")
                if cache and args.encode:
                    print(encode_in_every_worker(args.database_url, base, workers))
                    rss = ", ".join(f"{m:.0f}" for m in worker_rss_mib(root))
                    print(f"resident memory per worker with the encode models loaded: {rss} MiB")
    load = os.getloadavg()
    print(f"\nload average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
