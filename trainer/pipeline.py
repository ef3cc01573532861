"""The pipeline: chains the stages for one config, each resumable, then publishes atomically.

ingest → embed (+ a randomly initialised copy for the null control) → train (SAEs, transcoders,
control SAEs, neuron baselines; loss recovered) → analyze → GO → worklist → explain → concepts → publish.
Per-residue shards are written only for the layers a residue-level dictionary reads (or the
config's ``embed.residue_layers``); the other layers are pooled-only, and analyze recomputes
the residues of the proteins it shows at them with the same model. Loss recovered and concepts
run the model themselves and read no shards.
Every stage skips what a previous invocation finished, so rerunning after a crash or Ctrl-C
continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from app.atomic_write import write_atomic
from app.esm import LoadedModel, load_esm, random_init_copy
from app.queries import published_run_named
from app.sae import (
    Dictionary,
    Provenance,
    load_dictionary,
    residue_reconstructor,
    transcoder_predictor,
)
from app.settings import Settings
from app.stage_summaries import ConceptsManifest, EmbedManifest
from app.store.engine import make_engine, session_factory
from app.store.schema import Run
from trainer.analyze import OUTPUTS_VERSION as ANALYSIS_OUTPUTS_VERSION
from trainer.analyze import Spec, run_analyze
from trainer.concepts.labels import ConceptSet
from trainer.config import TrainerConfig
from trainer.corpus import Corpus, load_corpus, read_protein_tsv
from trainer.effects import measurable, run_effects
from trainer.embed import run_embed
from trainer.embedding_store import EmbeddingStore, ResidueSource
from trainer.engines import Engine, start_engine
from trainer.ingest import load_structure_mappings, run_ingest
from trainer.layout import RunLayout
from trainer.lm_loss import loss_recovered, transcoder_loss_recovered
from trainer.residue_replay import ReplayedResidues, model_residue_source
from trainer.residue_tracks import residue_values
from trainer.stamps import digest, read_stamp
from trainer.structure_coverage import chains_by_protein
from trainer.summary import record_timing
from trainer.train import Data, SaeSpec, run_train

log = logging.getLogger(__name__)
console = Console()

STAGES = ("ingest", "embed", "train", "analyze", "go", "worklist", "explain", "concepts", "publish")
RANDOM_SUFFIX = "-randinit"
RANDOM_SUBDIR = "embeddings_random"


@dataclasses.dataclass
class DictionaryPlan:
    """One dictionary the run produces, and where its activations come from."""

    spec: SaeSpec
    embeddings: str  # subdir of the work dir
    is_control: bool = False
    control_of: str | None = None


class Pipeline:
    """State shared by the stages of one run."""

    def __init__(
        self,
        cfg: TrainerConfig,
        settings: Settings,
        database_url: str | None = None,
        *,
        republish: bool = False,
    ):
        self.cfg = cfg
        self.settings = settings
        self.layout = RunLayout.of_run(settings.data_dir, cfg.run.name)
        self.workdir = self.layout.workdir
        self.database_url = database_url or settings.sqlalchemy_url
        self.republish = republish
        self.timings: dict[str, float] = {}
        self._model: LoadedModel | None = None
        self._random: LoadedModel | None = None
        self._corpus: Corpus | None = None
        self._engine: Engine | None = None

    # -- shared resources -------------------------------------------------------------------
    @property
    def model(self) -> LoadedModel:
        if self._model is None:
            # The embed stage's attention kernel for every forward pass of the run (analyze
            # recomputes residues of pooled-only layers: the same numbers as the shards').
            self._model = dataclasses.replace(
                load_esm(self.cfg.embed.model, self.cfg.embed.device),
                attention=self.cfg.embed.attention,
            )
        return self._model

    @property
    def random_model(self) -> LoadedModel:
        if self._random is None:
            self._random = random_init_copy(self.model, self.cfg.controls.random_init_seed)
        return self._random

    @property
    def engine(self) -> Engine:
        """Where embed, analyze and GO run (``[run] engine``); Ray starts on first use."""
        if self._engine is None:
            self._engine = start_engine(self.cfg.run.engine, self.cfg.ray)
        return self._engine

    def close_engine(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    @property
    def corpus(self) -> Corpus:
        if self._corpus is None:
            self._corpus = load_corpus(self.workdir)
        return self._corpus

    def plans(self) -> list[DictionaryPlan]:
        """Every dictionary: configured SAEs, their random-init controls, neuron baselines."""
        plans = [DictionaryPlan(spec, "embeddings") for spec in self.cfg.saes]
        if self.cfg.controls.random_init:
            for spec in self.cfg.saes:
                if spec.name in self.cfg.controls.dictionaries:
                    control = spec.model_copy(update={"name": spec.name + RANDOM_SUFFIX})
                    plans.append(DictionaryPlan(control, RANDOM_SUBDIR, True, spec.name))
        for layer in self.cfg.neurons.layers:
            for level in self._neuron_levels(layer):
                spec = SaeSpec(name=f"L{layer}-{level}-neurons", kind="neurons",
                               level=cast(Literal["protein", "residue"], level),
                               layer=layer, expansion=1.0)  # fmt: skip
                plans.append(DictionaryPlan(spec, "embeddings"))
        return plans

    def _neuron_levels(self, layer: int) -> list[str]:
        """The baseline's levels at ``layer``: as configured, else those of the layer's SAEs
        (protein when it has none), so each SAE has its baseline at its own level."""
        if self.cfg.neurons.levels is not None:
            return sorted(set(self.cfg.neurons.levels))
        return sorted({s.level for s in self.cfg.saes if s.layer == layer} or {"protein"})

    def store(self, subdir: str) -> EmbeddingStore:
        return EmbeddingStore(self.layout.embeddings(subdir).dir)

    def embed_layers(self) -> list[int]:
        layers = {s.layer for s in self.cfg.saes} | set(self.cfg.neurons.layers)
        layers |= {s.out_layer for s in self.cfg.saes if s.out_layer is not None}
        return sorted(layers | set(self.cfg.embed.residue_layers or []))

    def residue_layers(self, subdir: str = "embeddings") -> list[int]:
        """Layers of ``subdir`` stored per residue: those its residue-level dictionaries read.

        The main embeddings take ``embed.residue_layers`` when the config sets it (the config
        checks it covers every residue-level dictionary); the random-init control's embeddings
        always keep only what its control dictionaries read.
        """
        if subdir == "embeddings" and self.cfg.embed.residue_layers is not None:
            return sorted(set(self.cfg.embed.residue_layers))
        plans = [p for p in self.plans() if p.embeddings == subdir]
        return sorted({layer for p in plans for layer in p.spec.residue_layers()})

    def model_for(self, plan: DictionaryPlan) -> LoadedModel:
        """The model whose activations ``plan`` reads: the random-init copy for controls."""
        return self.random_model if plan.is_control else self.model

    def load(self, plan: DictionaryPlan) -> Dictionary:
        return load_dictionary(self.layout.sae(plan.spec.name).dir)

    # -- stages -------------------------------------------------------------------------------
    def ingest(self) -> None:
        self._corpus = run_ingest(self.workdir, self.cfg.ingest)
        console.print(f"corpus: {len(self._corpus.accessions):,} proteins")

    def embed(self) -> None:
        embed_cfg = self.cfg.embed.model_copy(
            update={"layers": self.embed_layers(), "residue_layers": self.residue_layers()}
        )
        run_embed(self.workdir, self.corpus.sequences, embed_cfg, model_override=self.model,
                  engine=self.engine, residue_seed=self.cfg.run.seed)  # fmt: skip
        if any(p.is_control for p in self.plans()):
            control_layers = sorted({p.spec.layer for p in self.plans() if p.is_control}
                                    | {p.spec.out_layer for p in self.plans()
                                       if p.is_control and p.spec.out_layer is not None})  # fmt: skip
            update = {
                "layers": control_layers,
                "residue_layers": self.residue_layers(RANDOM_SUBDIR),
            }
            run_embed(self.workdir, self.corpus.sequences, embed_cfg.model_copy(update=update),
                      model_override=self.random_model, subdir=RANDOM_SUBDIR,
                      engine=self.engine, residue_seed=self.cfg.run.seed)  # fmt: skip

    def _data(self, plan: DictionaryPlan) -> Callable[[SaeSpec], Data]:
        def get(spec: SaeSpec) -> Data:
            store = self.store(plan.embeddings)
            if spec.level == "protein":
                x = store.pooled(spec.layer)
                y = None
                if spec.out_layer is not None:
                    y = store.pooled(spec.out_layer) - x  # the seed paper's transcoder target
                return x, y, None, None
            # Stored precision (float16 shards stay float16: half the memory, cast per batch).
            n, dtype = self._residue_sample_size(spec, store), store.dtype
            x = store.sample_residues(spec.layer, n, spec.seed, dtype)
            y = (store.sample_residues(spec.out_layer, n, spec.seed, dtype)
                 if spec.out_layer else None)  # fmt: skip
            return x, y, None, None

        return get

    def _residue_samples(self, spec: SaeSpec) -> int:
        return max(spec.steps * spec.batch_size // 2, 10_000)

    def _residue_sample_size(self, spec: SaeSpec, store: EmbeddingStore) -> int:
        """The residues a residue-level dictionary trains on: what its steps want, at most what
        the store holds (with ``embed.residue_proteins``, the sampled proteins' residues)."""
        wanted, stored = self._residue_samples(spec), store.n_stored_residues
        if wanted > stored and store.residue_sampled:
            message = (f"train {spec.name}: wants {wanted:,} residues, the stored residue sample "
                       f"({store.manifest['residue_sample']['proteins']:,} proteins) holds "
                       f"{stored:,}: training on those (raise embed.residue_proteins for more)")  # fmt: skip
            log.warning(message)
            console.print(message)
        return min(wanted, stored)

    def _held_out(self) -> list[str]:
        """Proteins absent from the corpus, for masked-LM loss recovered."""
        in_corpus = set(self.corpus.accessions)
        rng = np.random.default_rng(self.cfg.loss.seed)
        candidates: list[str] = []
        for path in self.cfg.ingest.protein_tsvs:
            extra = read_protein_tsv(path)
            candidates.extend(
                s
                for a, s in zip(extra.accessions, extra.sequences, strict=True)
                if a not in in_corpus and 30 <= len(s) <= self.cfg.loss.max_length
            )
        if not candidates:
            candidates = [s for s in self.corpus.sequences if len(s) <= self.cfg.loss.max_length]
        picks = rng.choice(len(candidates), min(self.cfg.loss.n_proteins, len(candidates)), False)
        return [candidates[int(i)] for i in sorted(picks)]

    def train(self) -> None:
        held_out = self._held_out()
        for plan in self.plans():
            model = self.model_for(plan)
            base = Provenance(base_model=model.name, checkpoint_sha256=model.sha256,
                              layer=plan.spec.layer, out_layer=plan.spec.out_layer,
                              level=plan.spec.level, normalisation="layer_norm",
                              training_data_hash="")  # fmt: skip

            def extra(spec: SaeSpec, module: Dictionary, model: LoadedModel = model,
                      plan: DictionaryPlan = plan) -> dict[str, Any]:  # fmt: skip
                out: dict[str, Any] = {"is_control": plan.is_control, "control_of": plan.control_of}
                if spec.kind == "neurons":
                    return out
                with torch.inference_mode():
                    if spec.out_layer is None:
                        out |= loss_recovered(
                            model, held_out, spec.layer, residue_reconstructor(module)
                        )
                    else:  # the transcoded blocks replaced; ablation: the blocks skipped
                        predict = transcoder_predictor(module, adds_input=spec.level == "protein")
                        out |= transcoder_loss_recovered(
                            model, held_out, spec.layer, spec.out_layer, predict
                        )
                        out["loss_recovered_ablation"] = "blocks skipped"
                out["loss_recovered_n_proteins"] = len(held_out)
                return out

            inputs = self._stamp_inputs(plan)
            inputs["model"] = model.sha256
            inputs["loss"] = self.cfg.loss.model_dump(mode="json")  # loss recovered's proteins

            def with_spec(spec: SaeSpec, inputs: dict[str, Any] = inputs) -> dict[str, Any]:
                return {**inputs, "spec": spec.model_dump(mode="json")}  # the stamp: its digest

            run_train(self.workdir, [plan.spec], self._data(plan), base, extra_metrics=extra,
                      device=self.cfg.run.device, inputs=with_spec)  # fmt: skip

    def _stamp_inputs(self, plan: DictionaryPlan) -> dict[str, Any]:
        """What every stamp of this dictionary's work shares: the corpus (ingest's stamp) and
        the embeddings it reads (model, corpus fingerprint, precision). Read from the manifest
        alone: an ``EmbeddingStore`` would open every shard."""
        manifest = EmbedManifest.read(self.layout.embeddings(plan.embeddings).manifest)
        embeddings = manifest.identity()
        if manifest.residue_sample is not None and plan.spec.level == "residue":
            # A residue-level dictionary trains on the sample's residues (protein-level ones
            # read pooled vectors, and analysis recomputes the rest exactly: no change).
            embeddings["residue_sample"] = manifest.residue_sample
        return {
            "corpus": read_stamp(self.layout.corpus.done),
            "embeddings": embeddings,
            "control_of": plan.control_of,
        }

    def analysis_inputs(self, plan: DictionaryPlan) -> dict[str, Any]:
        """The analysis depends on its settings, the trained dictionary (its stamp) and the
        corpus and embeddings it encodes."""
        return {
            **self._stamp_inputs(plan),
            "analyze": self.cfg.analyze.result_inputs(),
            "outputs": ANALYSIS_OUTPUTS_VERSION,
            "dictionary": read_stamp(self.layout.sae(plan.spec.name).done),
            # Analyses from before structure examples were chosen by what their chain shows
            # (and stored with it) are made again.
            "structure_examples": "coverage",
        }  # fmt: skip

    def analyze(self) -> None:
        lengths = np.array([len(s) for s in self.corpus.sequences], dtype=np.int64)
        mappings = load_structure_mappings(self.workdir)
        chains = chains_by_protein(((m.protein_index, m.sequence_positions) for m in mappings),
                                   lengths)  # fmt: skip
        sources: dict[str, ResidueSource] = {}
        for plan in self.plans():
            spec = Spec(plan.spec.name, plan.spec.level, plan.spec.layer)
            store = self.store(plan.embeddings)
            source = None
            if spec.level == "protein" and not store.has_residues(spec.layer):
                if plan.embeddings not in sources:  # the example tracks' residues, recomputed
                    model = self.model_for(plan)
                    sources[plan.embeddings] = model_residue_source(
                        store, model, self.corpus.sequences,
                        cache_bytes=int(self.cfg.analyze.residue_cache_gib * 2**30),
                    )  # fmt: skip
                source = sources[plan.embeddings]
            elif store.residue_sampled:  # residues outside the stored sample, recomputed
                source = self._replayed(plan, store)
            module = self.load(plan)
            out = run_analyze(self.workdir, module, spec, store, chains,
                              self.cfg.analyze, source, inputs=self.analysis_inputs(plan),
                              sequences=self.corpus.sequences, engine=self.engine)  # fmt: skip
            if measurable(module, spec.level, self.cfg.effects):
                run_effects(out, self.model_for(plan), module, spec.layer,
                            self.corpus.sequences, self.cfg.effects, spec.level)  # fmt: skip

    def _replayed(self, plan: DictionaryPlan, store: EmbeddingStore) -> ReplayedResidues:
        """Residues of the proteins outside ``store``'s residue sample, as embed computed them."""
        return ReplayedResidues(store, self.model_for(plan), self.corpus.sequences)

    def go(self) -> None:
        from trainer.go.stage import run_go_stage

        plans = self.plans()
        control_of = {p.control_of: p.spec.name for p in plans if p.control_of}
        run_go_stage(self.workdir, self.cfg.go, dictionaries=[p.spec.name for p in plans],
                     control_of=control_of, corpus=self.corpus, engine=self.engine)  # fmt: skip
        if self.cfg.domains is not None:
            from trainer.domains.stage import run_domain_stage

            run_domain_stage(self.workdir, self.cfg.domains, self.cfg.go,
                             dictionaries=[p.spec.name for p in plans], control_of=control_of,
                             corpus=self.corpus)  # fmt: skip

    def worklist(self) -> None:
        if self.cfg.worklist is None:
            return
        from trainer.go.worklist_stage import run_worklist_stage

        plans = self.plans()
        controls = {p.control_of: p.spec.name for p in plans if p.control_of}
        run_worklist_stage(self.workdir, self.cfg.worklist, obo_path=self.cfg.go.obo_path,
                           dictionaries=[p.spec.name for p in plans], corpus=self.corpus,
                           controls=controls)  # fmt: skip

    def explain(self) -> None:
        from trainer.explain.stage import run_explain_stage

        plans = self.plans()
        saes = [p.spec.name for p in plans if p.spec.kind != "neurons" and not p.is_control]
        # The baseline of the run's main layer (its first dictionary's), else any neurons.
        main = self.cfg.saes[0].layer if self.cfg.saes else None
        all_neurons = [p.spec for p in plans if p.spec.kind == "neurons"]
        baselines = [s for s in all_neurons if s.layer == main] or all_neurons
        neurons = baselines[0].name if baselines else None
        result = run_explain_stage(self.workdir, self.cfg.explain, dictionaries=saes,
                                   neurons=neurons, go_term_names=self._go_term_names(),
                                   corpus=self.corpus, residue_values=self._residue_values(),
                                   base_url=os.environ.get("ANTHROPIC_BASE_URL"))  # fmt: skip
        if result.get("status") == "skipped":
            console.print(f"explain: skipped ({result.get('reason', 'no API key')})")

    def _residue_values(self) -> Callable[[str, int, int], np.ndarray]:
        """``(dictionary, feature, corpus row)`` -> the feature's activation at each residue of
        that protein, for residue-level prompts ("fires most at"); each dictionary loads once."""
        plans = {p.spec.name: p for p in self.plans()}
        loaded: dict[str, tuple[Dictionary, EmbeddingStore]] = {}

        def values(name: str, feature: int, row: int) -> np.ndarray:
            plan = plans[name]
            if name not in loaded:
                loaded[name] = (self.load(plan), self.store(plan.embeddings))
            module, store = loaded[name]
            spec = Spec(plan.spec.name, plan.spec.level, plan.spec.layer)
            source = self._replayed(plan, store) if store.residue_sampled else None
            return residue_values(module, spec, store, row, [feature], source)[feature]

        return values

    def _go_term_names(self) -> dict[str, str]:
        """Names of every GO id the prompts may show (alt ids resolved to their main term)."""
        from trainer.go.ontology import load_ontology

        ontology = load_ontology(self.cfg.go.obo_path, self.layout.go_cache)
        names = {go_id: term.name for go_id, term in ontology.terms.items()}
        names.update({alt: names[main] for alt, main in ontology.alt_to_main.items()})
        return names

    def concepts(self) -> None:
        if self.cfg.concepts is None:
            return
        from trainer.concepts.representations import SharedRepresentations
        from trainer.concepts.stage import run_concepts_stage

        plans = [p for p in self.plans() if p.spec.level == "residue" and p.spec.out_layer is None]
        shared = SharedRepresentations(int(self.cfg.concepts.cache_gib * 2**30),
                                       self.cfg.embed.max_tokens_per_batch)  # fmt: skip
        encoders = {}
        for plan in plans:
            model = self.model_for(plan)
            encoders[plan.spec.name] = shared.encoder(
                model, plan.spec.layer, self.load(plan).encode
            )
        inputs = {name: read_stamp(self.layout.sae(name).done) for name in encoders}
        if self.cfg.concepts.structures:
            inputs["corpus"] = read_stamp(self.layout.corpus.done)
        run_concepts_stage(self.workdir, self.cfg.concepts, encode_residues=encoders,
                           dictionaries=list(encoders), inputs=inputs,
                           structure_concepts=self._structure_concepts)  # fmt: skip
        console.print(f"concepts: {shared.forward_passes} language-model batches, "
                      f"{shared.kept_bytes / 2**30:.2f} GiB of representations kept")  # fmt: skip

    def _structure_concepts(self) -> list[ConceptSet]:
        """The DSSP concepts of this run's mapped structure chains (mkdssp runs once per chain,
        cached under ``dssp/``)."""
        from trainer.concepts.structure_labels import structure_concepts

        assert self.cfg.concepts is not None
        cfg = self.cfg.concepts
        corpus = load_corpus(self.workdir)
        mappings = load_structure_mappings(self.workdir)
        return structure_concepts(
            mappings, corpus.accessions, corpus.sequences, self.layout.dssp,
            test_fraction=cfg.structure_test_fraction,
            max_proteins=cfg.structure_max_proteins_per_split,
            chains_per_protein=cfg.structure_chains_per_protein, seed=cfg.seed,
            max_length=cfg.max_length,
        )  # fmt: skip

    def artifacts_digest(self) -> str:
        """What the published run is made of: every dictionary's training, analysis (and effects)
        and GO stamps, its training metrics (a newer trainer may measure more from the same inputs:
        stop 18's transcoder loss recovered), the explanations' content and the
        concept stage's fingerprint. Work redone under the same config (an older version's
        markers, a deleted DONE) changes it when what it wrote differs."""
        per_dictionary: dict[str, dict[str, str | None]] = {}
        for plan in self.plans():
            name = plan.spec.name
            layout = self.layout
            entry = {
                stage: read_stamp(files.done)
                for stage, files in (
                    ("saes", layout.sae(name)), ("analysis", layout.analysis(name)),
                    ("go", layout.go_hits(name)), ("domains", layout.domain_hits(name)),
                    ("worklist", layout.worklist(name)),
                )
            }  # fmt: skip
            # What each feature makes the model predict: its own stamp beside the analysis.
            entry["effects"] = read_stamp(layout.analysis(name).effects_done)
            # Rewritten by every training (with its timing), kilobytes: weights of real ESM2
            # dictionaries reach GB and would be read again at every publish.
            metrics = layout.sae(name).metrics
            entry["metrics"] = (
                hashlib.sha256(metrics.read_bytes()).hexdigest() if metrics.exists() else None
            )
            per_dictionary[name] = entry
        explanations = {
            path.parent.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in self.layout.explanation_files()
        }
        manifest = ConceptsManifest.read_if_exists(self.layout.concepts_manifest)
        fingerprint = manifest.fingerprint() if manifest is not None else None
        return digest({"dictionaries": per_dictionary, "explanations": explanations,
                       "concepts": fingerprint})  # fmt: skip

    def publish(self) -> int:
        """Load the run into the store; a run already published from this exact config and
        these exact artifacts is kept."""
        from trainer.publish import publish

        engine = make_engine(self.database_url)
        config = self.cfg.model_dump(mode="json")
        artifacts = self.artifacts_digest()
        try:
            with session_factory(engine)() as session:
                existing = published_run_named(session, self.cfg.run.name)
                unchanged = (config, artifacts)
                if (
                    existing is not None
                    and not self.republish
                    and (existing.config, existing.artifacts_digest) == unchanged
                ):
                    console.print(
                        f"publish: run {existing.name!r} is already published (id {existing.id})"
                    )
                    return existing.id
            model = self.model
            run = Run(name=self.cfg.run.name, base_model=model.name,
                      checkpoint_sha256=model.sha256,
                      layer=self.cfg.saes[0].layer if self.cfg.saes else 0,
                      corpus=self._corpus_description(), config=config,
                      artifacts_digest=artifacts,
                      notes=self.cfg.run.description or None)  # fmt: skip
            return publish(engine, self.workdir, run, [p.spec.name for p in self.plans()])
        finally:
            engine.dispose()

    def _corpus_description(self) -> str:
        names = [Path(p).name for p in self.cfg.ingest.protein_tsvs + self.cfg.ingest.fasta]
        return ", ".join(names)

    # -- driver -------------------------------------------------------------------------------
    def run(self, stages: list[str] | None = None) -> int | None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # The exact parameters of this invocation, beside what it makes (benchmarks read it).
        write_atomic(self.layout.config, self.cfg.model_dump_json(indent=1))
        if self.cfg.run.torch_threads:
            torch.set_num_threads(self.cfg.run.torch_threads)
        run_id = None
        try:
            for stage in stages or list(STAGES):
                start = time.perf_counter()
                console.rule(f"[bold]{stage}")
                result = getattr(self, stage)()
                if stage == "publish":
                    run_id = result
                self.timings[stage] = time.perf_counter() - start
                record_timing(self.workdir, stage, self.timings[stage])
        finally:
            self.close_engine()
        self.print_timings()
        return run_id

    def print_timings(self) -> None:
        table = Table(title=f"run {self.cfg.run.name}: time per stage")
        table.add_column("stage")
        table.add_column("seconds", justify="right")
        for stage, seconds in self.timings.items():
            table.add_row(stage, f"{seconds:.1f}")
        console.print(table)
