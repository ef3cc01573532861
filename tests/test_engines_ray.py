"""The Ray engine against the local one: the same shards, manifest, analyses and GO results, and
an embed run that survives a killed Ray worker. Ray is a test dependency (``.[ray]``, installed by
``make test``): without it these tests fail at import, they are never skipped."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray

from tests.conftest import MINI_MODEL
from tests.realdata import human_proteins
from tests.tiny_run import TinyRun
from trainer.config import TrainerConfig
from trainer.embed import EmbedConfig, run_embed
from trainer.engines import RayConfig, start_engine
from trainer.engines.local import LocalEngine
from trainer.engines.ray import RayEngine, start_local_instance
from trainer.pipeline import RANDOM_SUBDIR, Pipeline

TIMINGS = ("forward_s", "write_s", "wait_s")  # seconds: the only manifest fields that may differ

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[None]:
    """A local Ray instance with 2 CPUs for this module (the engines join it, never stop it),
    started as the engine starts one."""
    start_local_instance(2)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def corpus(shared_dir: Path) -> list[str]:
    rows = human_proteins(shared_dir, 120)
    return [r["sequence"] for r in rows if len(r["sequence"]) <= 300][:40]


@pytest.fixture(scope="module")
def embed_cfg(shared_dir: Path) -> EmbedConfig:
    """Small shards, so the plan has several and a worker dies with work left."""
    return EmbedConfig(model=str(shared_dir / MINI_MODEL), layers=[0, 2, 4], residue_layers=[2],
                       shard_max_residues=1000, device="cpu")  # fmt: skip


@pytest.fixture(scope="module")
def local_embeddings(
    tmp_path_factory: pytest.TempPathFactory, corpus: list[str], embed_cfg: EmbedConfig
) -> Path:
    workdir = tmp_path_factory.mktemp("local")
    run_embed(workdir, corpus, embed_cfg, engine=LocalEngine())
    return workdir / "embeddings"


def _without_timings(manifest: dict[str, Any]) -> dict[str, Any]:
    shards = [{k: v for k, v in s.items() if k not in TIMINGS} for s in manifest["shards"]]
    return {**manifest, "shards": shards}


def _assert_same_embeddings(a: Path, b: Path) -> None:
    files = sorted(p.name for p in a.glob("shard_*.safetensors"))
    assert files and files == sorted(p.name for p in b.glob("shard_*.safetensors"))
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    old, new = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert _without_timings(old) == _without_timings(new)
    assert new["done"] and all(s["done"] for s in new["shards"])


def _niceness() -> int:
    return os.nice(0)


def test_ray_workers_run_at_the_trainers_priority(ray_instance: None) -> None:
    """Ray's default niceness for workers (15) would starve the embed actors on a busy machine."""
    assert ray.get(ray.remote(_niceness).remote()) == os.nice(0)


def test_ray_embed_writes_the_local_engines_files(
    ray_instance: None,
    tmp_path: Path,
    corpus: list[str],
    embed_cfg: EmbedConfig,
    local_embeddings: Path,
) -> None:
    engine = start_engine("ray", RayConfig(cpus_per_worker=1))
    assert isinstance(engine, RayEngine) and engine.workers(100) == 2  # one actor per CPU
    manifest = run_embed(tmp_path, corpus, embed_cfg, engine=engine)
    assert len(manifest["shards"]) >= 6
    assert all(s["forward_s"] > 0 for s in manifest["shards"])  # every shard computed by Ray
    _assert_same_embeddings(local_embeddings, tmp_path / "embeddings")
    # Finished: a rerun leaves every file as it is.
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "embeddings").iterdir()}
    run_embed(tmp_path, corpus, embed_cfg, engine=engine)
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "embeddings").iterdir()}
    engine.close()
    assert ray.is_initialized()  # a joined instance stays up


def _descendants(root: int) -> list[int]:
    """Process ids below ``root`` (only our own Ray instance's workers are ever touched)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        children = [child for child, ppid in parent.items() if ppid == pid]
        found.extend(children)
        frontier.extend(children)
    return found


def _embed_actors() -> list[int]:
    pids = []
    for pid in _descendants(os.getpid()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"_ShardEmbedder" in cmdline:
            pids.append(pid)
    return pids


def test_a_killed_ray_worker_is_replaced_and_the_run_completes(
    ray_instance: None,
    tmp_path: Path,
    corpus: list[str],
    embed_cfg: EmbedConfig,
    local_embeddings: Path,
) -> None:
    """SIGKILL the embed actor once its first shard is on disk: Ray restarts it, retries its
    shards, and the run ends with the files of an uninterrupted run."""
    out = tmp_path / "embeddings"
    killed: list[int] = []
    on_disk_at_kill: list[int] = []
    stop = threading.Event()

    def kill_first_actor_mid_run() -> None:
        while not stop.is_set():
            written = [p for p in out.glob("shard_*.safetensors")]
            actors = _embed_actors()
            if written and actors:
                on_disk_at_kill.append(len(written))
                for pid in actors:
                    os.kill(pid, signal.SIGKILL)
                killed.extend(actors)
                return
            time.sleep(0.002)

    killer = threading.Thread(target=kill_first_actor_mid_run, daemon=True)
    killer.start()
    engine = RayEngine(RayConfig(num_workers=1, cpus_per_worker=1))
    try:
        manifest = run_embed(tmp_path, corpus, embed_cfg, engine=engine)
    finally:
        stop.set()
        killer.join()
    n_shards = len(manifest["shards"])
    assert killed, "the embed actor was never seen running"
    assert on_disk_at_kill[0] < n_shards, "the run had finished before the kill"
    assert not any(pid in _embed_actors() for pid in killed)
    _assert_same_embeddings(local_embeddings, out)


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _json_without_seconds(path: Path) -> Any:
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "seconds"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(json.loads(path.read_text()))


def _assert_same_tree(a: Path, b: Path) -> None:
    """Every file of ``a`` in ``b``: arrays equal bit for bit (``.npz`` holds zip timestamps,
    so members are compared, not bytes), JSON equal but for the seconds it took."""
    names = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for name in names:
        if name.suffix == ".npz":
            x, y = _arrays(a / name), _arrays(b / name)
            assert x.keys() == y.keys(), name
            for key in x:
                assert x[key].dtype == y[key].dtype, f"{name}:{key}"
                np.testing.assert_array_equal(x[key], y[key], err_msg=f"{name}:{key}")
        elif name.suffix == ".json":
            assert _json_without_seconds(a / name) == _json_without_seconds(b / name), name
        else:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_ray_engine_runs_embed_analyze_and_go_like_the_local_one(
    ray_instance: None, tiny_run: TinyRun, tmp_path: Path
) -> None:
    """The tiny run (made by the local engine) again with ``engine = "ray"`` from its trained
    dictionaries: shards, manifests, analyses and GO results are the same."""
    local = tiny_run.pipeline.workdir
    settings = tiny_run.settings.model_copy(update={"data_dir": tmp_path / "data"})
    cfg = TrainerConfig.model_validate(
        {**tiny_run.pipeline.cfg.model_dump(), "run": {**tiny_run.pipeline.cfg.run.model_dump(),
                                                       "engine": "ray"}}
    )  # fmt: skip
    assert cfg.run.engine == "ray" and cfg.ray == RayConfig()
    pipeline = Pipeline(cfg, settings, database_url=tiny_run.url)
    redone = ("embeddings", RANDOM_SUBDIR, "analysis", "go")
    shutil.copytree(local, pipeline.workdir, ignore=lambda d, names: [
        n for n in names if Path(d) == local and n in redone])  # fmt: skip
    pipeline.run(["embed", "analyze", "go"])
    assert pipeline._engine is None  # closed after the run
    for subdir in ("embeddings", RANDOM_SUBDIR):
        _assert_same_embeddings(local / subdir, pipeline.workdir / subdir)
    for subdir in ("analysis", "go"):
        _assert_same_tree(local / subdir, pipeline.workdir / subdir)
