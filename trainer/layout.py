"""The run layout: every file a run writes under its work directory, named in one place.

Stages, publish and the summary ask a ``RunLayout`` for paths instead of joining strings, so a
file's name exists once and a reader can see a run's whole tree here::

    config.json  timings.json
    corpus/        proteins.tsv.gz structures.json manifest.json DONE
    embeddings/    manifest.json shard_*.safetensors   (embeddings_random/: the control's)
    saes/{name}/   sae.safetensors config.json metrics.json INPUTS DONE checkpoint/
    analysis/{name}/  protein_activations.npz features.npz examples.npz protein_top.npz
                   neighbors.npz feature_map.npz aa_profile.npz summary.json DONE
                   effects.npz effects.json EFFECTS_DONE
    go/            terms.tsv cache/ DONE   go/{name}/: hits.npz paper_hits.npz summary.json DONE
    domains/       families.tsv DONE      domains/{name}/: hits.npz paper_hits.npz summary.json DONE
    worklist/      summary.json           worklist/{name}/: candidates.npz summary.json DONE
    explain/       cache/ comparison.json explain/{name}/: explanations.jsonl summary.json DONE
                                          batches/
    concepts/      concepts.json manifest.json DONE   concepts/{name}/: alignments.npz summary.json
    dssp/          mkdssp's output per chain (cache)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.sae.io import CONFIG, WEIGHTS

DONE = "DONE"
SUMMARY = "summary.json"


@dataclass(frozen=True)
class UnitDir:
    """One dictionary's folder of a stage: its summary and its DONE stamp."""

    dir: Path

    @property
    def done(self) -> Path:
        return self.dir / DONE

    @property
    def summary(self) -> Path:
        return self.dir / SUMMARY


@dataclass(frozen=True)
class CorpusFiles(UnitDir):
    """``corpus/``: the proteins (row i = protein i), their mapped structure chains."""

    @property
    def proteins(self) -> Path:
        return self.dir / "proteins.tsv.gz"

    @property
    def structures(self) -> Path:
        return self.dir / "structures.json"

    @property
    def manifest(self) -> Path:
        return self.dir / "manifest.json"


@dataclass(frozen=True)
class EmbeddingFiles:
    """``embeddings/`` (or the random-init control's): the manifest and its shards."""

    dir: Path

    @property
    def manifest(self) -> Path:
        return self.dir / "manifest.json"

    def shard(self, k: int) -> str:
        """The file name of shard ``k`` (the manifest records names relative to the folder)."""
        return f"shard_{k:05d}.safetensors"

    def interrupted_shards(self) -> list[Path]:
        """Temporaries of shards whose write never finished (``app.atomic_write``'s names, and
        the ``.tmp`` of trainers before it)."""
        return sorted(self.dir.glob("shard_*.safetensors.*tmp"))

    @property
    def residue_proteins(self) -> Path:
        """The sorted corpus rows whose residues the shards store, when ``embed.residue_proteins``
        asks for a sample (absent when every protein's are stored)."""
        return self.dir / "residue_proteins.npy"


@dataclass(frozen=True)
class SaeFiles(UnitDir):
    """``saes/{name}/``: a trained dictionary (``app.sae.io`` names the weights and config)."""

    @property
    def config(self) -> Path:
        return self.dir / CONFIG

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.json"

    @property
    def weights(self) -> Path:
        return self.dir / WEIGHTS

    @property
    def inputs(self) -> Path:
        """The stamp of the inputs a partial training (its checkpoint) was made from."""
        return self.dir / "INPUTS"

    @property
    def checkpoint(self) -> Path:
        return self.dir / "checkpoint"


@dataclass(frozen=True)
class AnalysisFiles(UnitDir):
    """``analysis/{name}/``: what the analyze stage (and effects beside it) wrote."""

    @property
    def protein_activations(self) -> Path:
        return self.dir / "protein_activations.npz"

    @property
    def features(self) -> Path:
        return self.dir / "features.npz"

    @property
    def examples(self) -> Path:
        return self.dir / "examples.npz"

    @property
    def protein_top(self) -> Path:
        return self.dir / "protein_top.npz"

    @property
    def neighbors(self) -> Path:
        return self.dir / "neighbors.npz"

    @property
    def feature_map(self) -> Path:
        return self.dir / "feature_map.npz"

    @property
    def aa_profile(self) -> Path:
        return self.dir / "aa_profile.npz"

    @property
    def effects(self) -> Path:
        return self.dir / "effects.npz"

    @property
    def effects_summary(self) -> Path:
        return self.dir / "effects.json"

    @property
    def effects_done(self) -> Path:
        """The effects' own stamp (they are measured after the analysis is DONE)."""
        return self.dir / "EFFECTS_DONE"


@dataclass(frozen=True)
class HitFiles(UnitDir):
    """``go/{name}/`` or ``domains/{name}/``: the strict protocol's hits and the paper's."""

    @property
    def hits(self) -> Path:
        return self.dir / "hits.npz"

    @property
    def paper_hits(self) -> Path:
        return self.dir / "paper_hits.npz"


@dataclass(frozen=True)
class WorklistFiles(UnitDir):
    @property
    def candidates(self) -> Path:
        return self.dir / "candidates.npz"


@dataclass(frozen=True)
class ExplainFiles(UnitDir):
    @property
    def explanations(self) -> Path:
        return self.dir / "explanations.jsonl"

    @property
    def batches(self) -> Path:
        """Open Message Batches, so an interrupted run collects them instead of paying twice."""
        return self.dir / "batches"


@dataclass(frozen=True)
class ConceptFiles(UnitDir):
    @property
    def alignments(self) -> Path:
        return self.dir / "alignments.npz"


@dataclass(frozen=True)
class StageDir(UnitDir):
    """A stage's top folder: its per-dictionary folders, its DONE, and the files it shares."""

    def file(self, name: str) -> Path:
        return self.dir / name

    def unit(self, name: str) -> Path:
        return self.dir / name


@dataclass(frozen=True)
class RunLayout:
    """Every artifact path of one run's work directory."""

    workdir: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "workdir", Path(self.workdir))

    @classmethod
    def of_run(cls, data_dir: Path, run_name: str) -> RunLayout:
        """The work directory of run ``run_name`` under the settings' data directory."""
        return cls(Path(data_dir) / "runs" / run_name)

    # -- run-wide files -------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        """The exact parameters of the last invocation (benchmarks read it)."""
        return self.workdir / "config.json"

    @property
    def timings(self) -> Path:
        return self.workdir / "timings.json"

    @property
    def corpus(self) -> CorpusFiles:
        return CorpusFiles(self.workdir / "corpus")

    def embeddings(self, subdir: str = "embeddings") -> EmbeddingFiles:
        return EmbeddingFiles(self.workdir / subdir)

    @property
    def dssp(self) -> Path:
        """mkdssp's output per chain, kept between runs."""
        return self.workdir / "dssp"

    # -- stage folders --------------------------------------------------------------------------
    @property
    def saes_dir(self) -> Path:
        return self.workdir / "saes"

    def sae(self, name: str) -> SaeFiles:
        return SaeFiles(self.saes_dir / name)

    def analysis(self, name: str) -> AnalysisFiles:
        return AnalysisFiles(self.workdir / "analysis" / name)

    @property
    def go(self) -> StageDir:
        return StageDir(self.workdir / "go")

    @property
    def go_terms(self) -> Path:
        """Every GO term the run's tests and hits name (id, name, namespace, depth, parents)."""
        return self.go.file("terms.tsv")

    @property
    def go_cache(self) -> Path:
        """The parsed ontology, cached between runs."""
        return self.go.file("cache")

    def go_hits(self, name: str) -> HitFiles:
        return HitFiles(self.go.unit(name))

    @property
    def domains(self) -> StageDir:
        return StageDir(self.workdir / "domains")

    @property
    def domain_families(self) -> Path:
        return self.domains.file("families.tsv")

    def domain_hits(self, name: str) -> HitFiles:
        return HitFiles(self.domains.unit(name))

    @property
    def worklists(self) -> StageDir:
        return StageDir(self.workdir / "worklist")

    def worklist(self, name: str) -> WorklistFiles:
        return WorklistFiles(self.worklists.unit(name))

    @property
    def explain(self) -> StageDir:
        return StageDir(self.workdir / "explain")

    @property
    def explain_cache(self) -> Path:
        """Claude's answers by request hash: a rerun pays for nothing it already asked."""
        return self.explain.file("cache")

    @property
    def explain_comparison(self) -> Path:
        return self.explain.file("comparison.json")

    def explanations(self, name: str) -> ExplainFiles:
        return ExplainFiles(self.explain.unit(name))

    @property
    def concepts(self) -> StageDir:
        return StageDir(self.workdir / "concepts")

    @property
    def concept_records(self) -> Path:
        """Every concept the stage evaluated (name, source, counts)."""
        return self.concepts.file("concepts.json")

    @property
    def concepts_manifest(self) -> Path:
        return self.concepts.file("manifest.json")

    def concept_results(self, name: str) -> ConceptFiles:
        return ConceptFiles(self.concepts.unit(name))

    def explanation_files(self) -> list[Path]:
        """Every dictionary's explanations.jsonl, sorted (the published digest hashes them)."""
        return sorted(ExplainFiles(p.parent).explanations
                      for p in self.explain.dir.glob("*/explanations.jsonl"))  # fmt: skip

    def trained(self) -> list[str]:
        """Names of the dictionaries whose training finished (DONE written)."""
        if not self.saes_dir.exists():
            return []
        return sorted(p.name for p in self.saes_dir.iterdir() if self.sae(p.name).done.exists())
