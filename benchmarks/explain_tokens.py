"""Requests and tokens a 200-feature explain run needs, from our real prompts; and a measured run.

Token estimate (documented method): Claude 3+/4 tokenizers are not published, so offline we count
characters and divide by 3.5 (Anthropic's rule of thumb for English text), with characters / 3.0
as an upper bound because GO ids and accessions split into short tokens. With a key, the exact
count is one free ``client.messages.count_tokens`` call per prompt.

Part 1 measures the metadata block of every one of the 17,459 real human proteins (with GO names)
and builds the expected prompt size of one feature (15 explain proteins with activations, 17 test
proteins without). Part 2 runs the stage on 240 real proteins with mini-ESM2 activations (a small
TopK SAE and the ReLU'd neurons) against the local fake Messages API and prints what it measured.

    PYTHONPATH=. python benchmarks/explain_tokens.py [--shared ../shared] [--skip-run]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from tests.explain_data import (
    fit_topk_sae,
    go_names,
    load_test_corpus,
    residue_reps,
    write_activations,
)
from tests.fake_anthropic import FakeAnthropic
from trainer.explain.costs import CACHE_READ_FACTOR, CACHE_WRITE_FACTOR, model_prices
from trainer.explain.prompts import (
    EXPLAIN_SYSTEM,
    EXPLAIN_TOOL,
    SCORE_SYSTEM,
    SCORE_TOOL,
    protein_block,
)
from trainer.explain.stage import ExplainConfig, run_explain_stage

CHARS_PER_TOKEN = 3.5
CHARS_PER_TOKEN_LOW = 3.0


def tok(chars: float, per: float = CHARS_PER_TOKEN) -> float:
    return chars / per


def part1(shared: Path, n_features: int, cfg: ExplainConfig, reply_chars: dict[str, float]) -> None:
    corpus = load_test_corpus(shared, 10**6, max_len=10**6)  # all named human proteins with GO
    names = go_names(shared, corpus)
    with_act = np.array(
        [
            len(protein_block(corpus, i, names, activation=0.5))
            for i in range(len(corpus.accessions))
        ]
    )
    without = np.array(
        [len(protein_block(corpus, i, names)) for i in range(len(corpus.accessions))]
    )
    fixed_e = len(EXPLAIN_SYSTEM) + len(json.dumps(EXPLAIN_TOOL)) + 250  # + headers/instructions
    fixed_s = len(SCORE_SYSTEM) + len(json.dumps(SCORE_TOOL)) + 120 + reply_chars["explain"]
    e_chars = fixed_e + 15 * with_act.mean() + 2 * 15
    s_chars = fixed_s + 17 * without.mean() + 2 * 17
    print(
        f"proteins measured: {len(with_act)}; block chars mean {with_act.mean():.0f} "
        f"(median {np.median(with_act):.0f}, p95 {np.percentile(with_act, 95):.0f})"
    )
    print(
        f"shared prefix (system + tool) tokens: explain ~{tok(len(EXPLAIN_SYSTEM) + len(json.dumps(EXPLAIN_TOOL))):.0f}, "
        f"score ~{tok(len(SCORE_SYSTEM) + len(json.dumps(SCORE_TOOL))):.0f} (below the 1,024-token "
        "minimum for prompt caching on Sonnet: the cache mark is harmless but saves nothing)"
    )
    p_in, p_out = model_prices(cfg.model)
    for label, n_dicts in (("one dictionary", 1), ("dictionary + neuron baseline", 2)):
        n = n_features * n_dicts
        tin = n * (tok(e_chars) + tok(s_chars))
        tin_hi = n * (tok(e_chars, CHARS_PER_TOKEN_LOW) + tok(s_chars, CHARS_PER_TOKEN_LOW))
        tout = (
            n * (tok(reply_chars["explain"]) + tok(reply_chars["score"])) + n * 2 * 60
        )  # + tool-call wrapper
        usd = (tin * p_in + tout * p_out) / 1e6
        print(
            f"{n_features} features, {label}: {2 * n} requests, input ~{tin / 1e6:.2f} M tokens "
            f"(<= {tin_hi / 1e6:.2f} M), output ~{tout / 1e3:.0f} k tokens; "
            f"{cfg.model}: ${usd:.2f} sync, ${usd / 2:.2f} with batches"
        )
    print(
        f"per feature: explain prompt ~{tok(e_chars):.0f} tokens, score prompt ~{tok(s_chars):.0f} tokens"
    )
    _ = (CACHE_READ_FACTOR, CACHE_WRITE_FACTOR)


def part2(shared: Path, n_features: int) -> dict[str, float]:
    t0 = time.time()
    corpus = load_test_corpus(shared, 240, max_len=300)
    names = go_names(shared, corpus)
    pooled = np.stack([r.mean(0) for r in residue_reps(shared, corpus.sequences)])
    print(f"embedded {len(pooled)} proteins in {time.time() - t0:.0f} s")
    with tempfile.TemporaryDirectory() as tmp, FakeAnthropic() as fake:
        wd = Path(tmp)
        write_activations(wd, "sae", fit_topk_sae(pooled, 384, 16))
        write_activations(wd, "neurons", np.clip(pooled, 0, None))
        os.environ["ANTHROPIC_API_KEY"] = fake.api_key
        cfg = ExplainConfig(n_features=n_features, concurrency=4)
        t0 = time.time()
        res = run_explain_stage(
            wd,
            cfg,
            dictionaries=["sae"],
            neurons="neurons",
            go_term_names=names,
            base_url=fake.base_url,
            corpus=corpus,
        )
        took = time.time() - t0
        msgs = fake.messages()
        e = [m for m in msgs if m["tool_choice"]["name"] == "record_explanation"]
        s = [m for m in msgs if m["tool_choice"]["name"] == "record_predictions"]
        e_chars = np.mean([len(m["messages"][0]["content"]) for m in e])
        s_chars = np.mean([len(m["messages"][0]["content"]) for m in s])
        recs = [
            json.loads(x) for x in (wd / "explain/sae/explanations.jsonl").read_text().splitlines()
        ]
        expl = np.mean([len(r["text"]) for r in recs if r.get("text")])
        pred = np.mean(
            [
                len(
                    json.dumps(
                        {
                            "predictions": [
                                {"id": a, "activation": 0.12} for a in r["test_accessions"]
                            ]
                        }
                    )
                )
                for r in recs
                if r.get("test_accessions")
            ]
        )
        print(
            f"fake-server run: {res['requests']} requests in {took:.1f} s; "
            f"usage {json.dumps(res['usage'])}"
        )
        for name, st in res["dictionaries"].items():
            print(
                f"  {name}: scored {st['n_scored']}, skipped {st['n_skipped']}, mean r {st['mean_r']:.3f}, "
                f"median r {st['median_r']:.3f}, p<0.05 (r>0) {st['frac_p_lt_0_05_positive_r']:.0%}"
            )
        print(
            f"  user prompt chars: explain {e_chars:.0f} (~{tok(e_chars):.0f} tok), score {s_chars:.0f} "
            f"(~{tok(s_chars):.0f} tok) on these shorter test proteins"
        )
        rec = next(r for r in recs if r["status"] == "scored")
        Path("data").mkdir(exist_ok=True)
        Path("data/example_explain_prompt.txt").write_text(
            EXPLAIN_SYSTEM + "\n\n---\n\n" + rec["prompt"]
        )
        Path("data/example_score_prompt.txt").write_text(
            SCORE_SYSTEM + "\n\n---\n\n" + rec["score_prompt"]
        )
        print("  example prompts written to data/example_*_prompt.txt")
    return {"explain": float(expl), "score": float(pred)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", type=Path, default=Path("../shared"))
    ap.add_argument("--n-features", type=int, default=200)
    ap.add_argument("--skip-run", action="store_true")
    args = ap.parse_args()
    reply = {"explain": 110.0, "score": 650.0} if args.skip_run else part2(args.shared, 20)
    part1(args.shared, args.n_features, ExplainConfig(), reply)


if __name__ == "__main__":
    main()
