"""The explain stage: Claude explains features in one sentence, then predicts held-out activations.

Reads ``analysis/{name}/protein_activations.npz`` and the corpus; writes, per dictionary,
``explain/{name}/explanations.jsonl`` (one record per feature met: scored, skipped with its reason,
failed with its reason, or pending when the budget ran out), ``explain/{name}/summary.json`` (with
the features-vs-neurons comparison) and ``explain/{name}/DONE`` last. Requests are cached under
``explain/cache/`` so re-running costs nothing and resumes after an interruption.

Each dictionary is a stage-driver unit (``trainer.stage_driver``): its DONE holds the stamp of the
settings that shape its records and of the analysis it reads, so a finished dictionary is not
run again (no request, not even a cached one) until one of those changes, and the log says which.
A DONE from before stamps ("ok") is stamped when first seen if its summary was made with these
settings: such explanations are kept, not paid for again.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field
from scipy import sparse
from tqdm import tqdm

from app.atomic_write import write_atomic
from app.sae.io import read_provenance
from trainer.explain.batches import run_batch
from trainer.explain.client import ClaudeClient, Outcome
from trainer.explain.costs import BudgetExceeded, CostMeter, model_prices
from trainer.explain.prompts import CorpusLike
from trainer.explain.records import FeatureJob, finish_record, summarise
from trainer.explain.sampling import BinSpec, sample_features
from trainer.layout import ExplainFiles, RunLayout
from trainer.stage_driver import StageUnit, needs_run
from trainer.stamps import read_stamp

log = logging.getLogger(__name__)
ResidueValues = Callable[[str, int, int], np.ndarray]
# Settings that change how the requests are sent or paid for, not the records: a finished
# dictionary is kept across them.
_NOT_RESULTS = {"concurrency", "budget_usd", "use_batches", "max_retries", "outer_retries",
                "backoff_s", "timeout_s", "batch_poll_s", "price_input_per_mtok",
                "price_output_per_mtok"}  # fmt: skip


class ExplainConfig(BaseModel):
    """Every parameter of the explain stage (recorded in the run's config)."""

    model: str = "claude-sonnet-4-6"
    # None: not sent (API 2026-10-21 rejects sampling parameters). A value (the seed used 0) is
    # sent under the legacy API version 2023-06-01, for models that still accept it.
    temperature: float | None = None
    max_tokens: int = 1024
    concurrency: int = Field(4, ge=1)
    budget_usd: float | None = 25.0
    n_features: int = Field(200, ge=1)
    use_batches: bool = False
    seed: int = 42
    bins: BinSpec = Field(default_factory=BinSpec)
    max_go_terms: int = 15
    malformed_retries: int = 2
    max_retries: int = 4  # the SDK's own retries (429/5xx/timeouts)
    outer_retries: int = 2  # ours, after the SDK gives up, with exponential backoff
    backoff_s: float = 5.0
    timeout_s: float = 120.0
    batch_poll_s: float = 30.0
    retry_failed: bool = False
    price_input_per_mtok: float | None = None
    price_output_per_mtok: float | None = None

    def prices(self) -> tuple[float, float]:
        override = None
        if self.price_input_per_mtok is not None and self.price_output_per_mtok is not None:
            override = (self.price_input_per_mtok, self.price_output_per_mtok)
        return model_prices(self.model, override)

    def result_inputs(self) -> dict[str, Any]:
        """The settings a dictionary's explanations depend on (part of its stamp)."""
        return self.model_dump(mode="json", exclude=_NOT_RESULTS)


def _unit(layout: RunLayout, cfg: ExplainConfig, name: str) -> StageUnit:
    """One dictionary's explanations: its settings and the analysis it reads (its stamp)."""
    files = layout.explanations(name)
    inputs = {"explain": cfg.result_inputs(), "analysis": read_stamp(layout.analysis(name).done)}
    return StageUnit(f"explain: {name}", files.done, inputs,
                     outputs=(files.explanations, files.summary))  # fmt: skip


def _stamp_older_marker(unit: StageUnit, files: ExplainFiles, cfg: ExplainConfig) -> None:
    """A dictionary explained before stamps (DONE "ok") whose summary records these settings
    is current: its marker gets the stamp instead of the explanations being made again."""
    if read_stamp(unit.done) != "ok" or not files.summary.exists():
        return
    try:
        made_with = ExplainConfig.model_validate(json.loads(files.summary.read_text())["config"])
    except (KeyError, ValueError):
        return
    if made_with.result_inputs() == cfg.result_inputs():
        unit.mark_done()


def _read_records(files: ExplainFiles) -> list[dict[str, Any]]:
    return [json.loads(line) for line in files.explanations.read_text().splitlines() if line]


def _load_corpus(workdir: Path) -> CorpusLike:
    from trainer.corpus import load_corpus  # type: ignore[import-not-found,unused-ignore]

    corpus: CorpusLike = load_corpus(workdir)
    return corpus


def _level(workdir: Path, name: str) -> str:
    """protein | residue, from the saved dictionary's provenance (``config.json``)."""
    files = RunLayout(workdir).sae(name)
    if files.config.exists():
        return read_provenance(files.dir).level
    return "protein"


def _load_matrix(workdir: Path, name: str, n_proteins: int) -> sparse.csc_matrix:
    path = RunLayout(workdir).analysis(name).protein_activations
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (run the analyze stage for {name!r} first)")
    mat = sparse.load_npz(path)
    if mat.shape[0] != n_proteins:
        raise ValueError(
            f"{path}: {mat.shape[0]} rows but the corpus has {n_proteins} proteins (stale file?)"
        )
    return sparse.csc_matrix(mat, dtype=np.float32)


class _Runner:
    """Runs one dictionary's jobs through the client (threads or batches) with a progress bar."""

    def __init__(self, client: ClaudeClient, cfg: ExplainConfig, state_dir: Path) -> None:
        self.client, self.cfg, self.state_dir = client, cfg, state_dir
        self.budget_hit: str | None = None

    def _one(self, job: FeatureJob, bar: tqdm[Any]) -> None:
        try:
            if self.budget_hit:
                return
            job.explained = self.client.call(job.explain_request, job.explain_validator)
            if job.explained.value is not None:
                req, validate = job.score_call(job.explained.value)
                job.scored = self.client.call(req, validate)
        except BudgetExceeded as exc:
            self.budget_hit = str(exc)
        finally:
            bar.update(1)
            bar.set_postfix_str(f"cost ${self.client.meter.spent_usd:.4f}")

    def run(self, jobs: list[FeatureJob], label: str) -> None:
        bar = tqdm(total=len(jobs), desc=f"explain {label}", unit="feature")
        try:
            if self.cfg.use_batches:
                self._batched(jobs, bar)
            else:
                with ThreadPoolExecutor(self.cfg.concurrency) as pool:
                    list(pool.map(lambda j: self._one(j, bar), jobs))
        finally:
            bar.close()

    def _batched(self, jobs: list[FeatureJob], bar: tqdm[Any]) -> None:
        def poll(batch: Any) -> None:
            bar.set_postfix_str(
                f"batch {batch.processing_status}, cost ${self.client.meter.spent_usd:.4f}"
            )

        try:
            got = run_batch(
                self.client,
                [(j.explain_request, j.explain_validator) for j in jobs],
                self.state_dir / "explain",
                poll_s=self.cfg.batch_poll_s,
                on_poll=poll,
            )
            for j in jobs:
                j.explained = got[j.explain_request.key]
            calls = {
                j.feature: j.score_call(j.explained.value)
                for j in jobs
                if j.explained and j.explained.value is not None
            }
            got = run_batch(
                self.client,
                list(calls.values()),
                self.state_dir / "score",
                poll_s=self.cfg.batch_poll_s,
                on_poll=poll,
            )
            for j in jobs:
                if j.feature in calls:
                    j.scored = got[calls[j.feature][0].key]
        except BudgetExceeded as exc:
            self.budget_hit = str(exc)
        bar.update(len(jobs))


def run_explain_stage(
    workdir: Path | str,
    cfg: ExplainConfig,
    *,
    dictionaries: list[str],
    neurons: str | None,
    go_term_names: Mapping[str, str],
    base_url: str | None = None,
    corpus: CorpusLike | None = None,
    residue_values: ResidueValues | None = None,
) -> dict[str, Any]:
    """Explain and score ``cfg.n_features`` features of each dictionary and of the neurons.

    ``residue_values(name, feature, row)`` gives a residue-level feature's per-residue
    activations on a protein, so its explain prompt can show where it fires. Without
    ``ANTHROPIC_API_KEY`` the stage logs why and returns ``{"status": "skipped"}``.
    """
    workdir = Path(workdir)
    layout = RunLayout(workdir)
    api_key = os.environ.get("ANTHROPIC_API_KEY")
    if not api_key:
        msg = "ANTHROPIC_API_KEY is not set: skipping the explain stage (the rest still runs)"
        log.warning(msg)
        return {"status": "skipped", "reason": msg}
    corpus = corpus if corpus is not None else _load_corpus(workdir)
    meter = CostMeter(cfg.prices(), cfg.budget_usd)
    client = ClaudeClient(
        api_key,
        layout.explain_cache,
        meter,
        base_url=base_url,
        max_retries=cfg.max_retries,
        timeout_s=cfg.timeout_s,
        outer_retries=cfg.outer_retries,
        backoff_s=cfg.backoff_s,
        malformed_retries=cfg.malformed_retries,
        retry_failed=cfg.retry_failed,
    )
    names = [*dictionaries, *([neurons] if neurons else [])]
    stats: dict[str, dict[str, Any]] = {}
    budget_hit: str | None = None
    for name in names:
        files = layout.explanations(name)
        unit = _unit(layout, cfg, name)
        _stamp_older_marker(unit, files, cfg)
        if not needs_run(unit):
            stats[name] = summarise(_read_records(files))
            continue
        files.done.unlink(missing_ok=True)
        mat = _load_matrix(workdir, name, len(corpus.accessions))
        level = _level(workdir, name)
        samples = sample_features(mat, cfg.n_features, cfg.bins, cfg.seed)
        values = (
            (lambda f, r, n=name: residue_values(n, f, r))
            if residue_values is not None and level == "residue"
            else None
        )
        jobs = [
            FeatureJob.build(s, corpus, go_term_names, cfg, mat, values)
            for s in samples
            if s.skip_reason is None
        ]
        runner = _Runner(client, cfg, files.batches)
        if budget_hit is None:
            runner.run(jobs, name)
            budget_hit = runner.budget_hit
        by_feature = {j.feature: j for j in jobs}
        records = [finish_record(s, by_feature.get(s.feature), cfg.model) for s in samples]
        stats[name] = summarise(records)
        write_atomic(files.explanations, "".join(json.dumps(r) + "\n" for r in records))
        summary = {
            "dictionary": name,
            "level": level,
            "model": cfg.model,
            "config": cfg.model_dump(),
            **stats[name],
        }
        write_atomic(files.summary, json.dumps(summary, indent=2))
        if budget_hit is None:
            unit.mark_done()
    comparison = {
        name: {"features": stats[name], "neurons": stats.get(neurons) if neurons else None}
        for name in dictionaries
    }
    for name in dictionaries:
        path = layout.explanations(name).summary
        summary = json.loads(path.read_text())
        summary["comparison"] = comparison[name]
        write_atomic(path, json.dumps(summary, indent=2))
    write_atomic(layout.explain_comparison, json.dumps(comparison, indent=2))
    return {
        "status": "partial" if budget_hit else "done",
        "reason": budget_hit,
        "dictionaries": stats,
        "comparison": comparison,
        "usage": meter.totals(),
        "requests": client.requests_made,
    }


__all__ = ["ExplainConfig", "Outcome", "run_explain_stage"]
