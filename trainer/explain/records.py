"""One feature's requests (a job) and its output record; the per-dictionary summary figures."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse, stats

from trainer.explain.client import ClaudeRequest, Outcome, Validator
from trainer.explain.prompts import (
    EXPLAIN_SYSTEM,
    EXPLAIN_TOOL,
    SCORE_SYSTEM,
    SCORE_TOOL,
    CorpusLike,
    explain_prompt,
    parse_explanation,
    parse_predictions,
    protein_block,
    residue_sites,
    score_prompt,
)
from trainer.explain.sampling import FeatureSample

if TYPE_CHECKING:
    from trainer.explain.stage import ExplainConfig


@dataclass
class FeatureJob:
    """The explain request of one feature, and how to build its score request."""

    feature: int
    sample: FeatureSample
    explain_request: ClaudeRequest
    test_ids: list[str]
    test_blocks: list[str]
    cfg: ExplainConfig
    explained: Outcome | None = None
    scored: Outcome | None = None
    explain_validator: Validator = parse_explanation

    @classmethod
    def build(
        cls,
        sample: FeatureSample,
        corpus: CorpusLike,
        go_names: Mapping[str, str],
        cfg: ExplainConfig,
        matrix: sparse.csc_matrix,
        values: Callable[[int, int], np.ndarray] | None,
    ) -> FeatureJob:
        f = sample.feature
        f_max = float(matrix[:, f].max())
        pairs = sorted(
            zip(sample.explain_acts, sample.explain_rows, strict=True), key=lambda p: -p[0]
        )
        active: list[str] = []
        inactive: list[str] = []
        for act, row in pairs:
            sites: list[str] = []
            if values is not None and act > 0 and f_max > 0:
                raw = np.asarray(values(f, row), dtype=np.float64)
                sites = residue_sites(corpus.sequences[row], (raw / f_max).tolist())
            block = protein_block(
                corpus, row, go_names, activation=act, sites=sites, max_go_terms=cfg.max_go_terms
            )
            (active if act > 0 else inactive).append(block)
        req = ClaudeRequest(
            cfg.model,
            EXPLAIN_SYSTEM,
            explain_prompt(f, active, inactive),
            EXPLAIN_TOOL,
            cfg.temperature,
            cfg.max_tokens,
        )
        test_blocks = [
            protein_block(corpus, r, go_names, max_go_terms=cfg.max_go_terms)
            for r in sample.test_rows
        ]
        ids = [corpus.accessions[r] for r in sample.test_rows]
        return cls(f, sample, req, ids, test_blocks, cfg)

    def score_call(self, explanation: str) -> tuple[ClaudeRequest, Validator]:
        req = ClaudeRequest(
            self.cfg.model,
            SCORE_SYSTEM,
            score_prompt(explanation, self.test_blocks),
            SCORE_TOOL,
            self.cfg.temperature,
            self.cfg.max_tokens,
        )
        ids = self.test_ids
        return req, lambda raw: parse_predictions(raw, ids)


def _pearson(pred: list[float], actual: list[float]) -> tuple[float | None, float | None]:
    """Pearson r and p; undefined (None) when either side is constant."""
    if np.std(pred) == 0 or np.std(actual) == 0:
        return None, None
    r, p = stats.pearsonr(pred, actual)
    return float(r), float(p)


def finish_record(sample: FeatureSample, job: FeatureJob | None, model: str) -> dict[str, Any]:
    """The explanations.jsonl record of one feature met during sampling."""
    rec: dict[str, Any] = {
        "feature_index": sample.feature,
        "n_active": sample.n_active,
        "n_inactive": sample.n_inactive,
        "model": model,
    }
    if sample.skip_reason is not None or job is None:
        return {**rec, "status": "skipped", "reason": sample.skip_reason}
    req = job.explain_request
    rec.update(
        prompt_hash=req.key,
        prompt=req.prompt,
        explain_rows=sample.explain_rows,
        explain_activations=sample.explain_acts,
        test_accessions=job.test_ids,
        test_rows=sample.test_rows,
        actual=sample.test_acts,
    )
    if job.explained is None:
        return {**rec, "status": "pending", "reason": "budget exhausted before this feature"}
    if job.explained.value is None:
        return {**rec, "status": "failed", "reason": f"explain: {job.explained.failure}"}
    rec["text"] = job.explained.value
    score_req, _ = job.score_call(job.explained.value)
    rec.update(score_prompt_hash=score_req.key, score_prompt=score_req.prompt)
    if job.scored is None:
        return {**rec, "status": "pending", "reason": "budget exhausted before scoring"}
    if job.scored.value is None:
        return {**rec, "status": "failed", "reason": f"score: {job.scored.failure}"}
    pred = list(job.scored.value)
    r, p = _pearson(pred, sample.test_acts)
    reason = None if r is not None else "constant predictions: Pearson r undefined (counted as 0)"
    return {
        **rec,
        "status": "scored",
        "reason": reason,
        "predicted": pred,
        "pearson_r": r,
        "p_value": p,
        "n": len(pred),
    }


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean/median r and the share with p < 0.05 and r > 0 over scored features.

    An undefined r (constant predictions) counts as 0: the explanation predicted nothing.
    """
    scored = [r for r in records if r["status"] == "scored"]
    rs = [r["pearson_r"] if r["pearson_r"] is not None else 0.0 for r in scored]
    n_sig = sum(
        1 for r in scored if r["p_value"] is not None and r["p_value"] < 0.05 and r["pearson_r"] > 0
    )
    count = {
        s: sum(1 for r in records if r["status"] == s)
        for s in ("scored", "skipped", "failed", "pending")
    }
    return {
        "n_features_met": len(records),
        **{f"n_{k}": v for k, v in count.items()},
        "n_undefined_r": sum(1 for r in scored if r["pearson_r"] is None),
        "mean_r": float(np.mean(rs)) if rs else None,
        "median_r": float(np.median(rs)) if rs else None,
        "frac_p_lt_0_05_positive_r": n_sig / len(scored) if scored else None,
        "n_p_lt_0_05_positive_r": n_sig,
    }
