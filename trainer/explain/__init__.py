"""Claude explanations of features, scored by predicting held-out activations (seed protocol).

    from trainer.explain.stage import ExplainConfig, run_explain_stage
    run_explain_stage(workdir, ExplainConfig(n_features=200, use_batches=True),
                      dictionaries=["topk_l3"], neurons="neurons_l3", go_term_names=names)

Modules: ``sampling`` (bins, spill-over, skips, split), ``prompts`` (prompts, tools, strict
parsing), ``client`` (SDK, cache, retries), ``batches`` (Message Batches with resume), ``costs``
(usage, prices, budget), ``records`` (per-feature records, summary), ``labels`` (offline GO/Pfam
labels), ``store_load`` (into the store inside ``publish``), ``stage`` (the entry point).
"""
