"""The one read layer of the store: every SELECT the app (and the trainer's read paths) runs.

Split by subject (one module each); import from here. Only published runs are shown: every
read of them goes through ``scope.published()``. What the API and the pages return is the one
schema, ``app.queries.models``, re-exported here too.
"""

from __future__ import annotations

from app.queries import models as _models
from app.queries.concepts import (
    AlignmentRow,
    ConceptIndexRow,
    DictionaryAlignments,
    LabelledExample,
    concept_alignments,
    concept_by_name,
    concept_example,
    concept_examples,
    concept_index,
    example_candidates,
    track_rows,
)
from app.queries.domains import (
    domain_control,
    domain_hit,
    domains_payload,
    family_url,
    feature_domain_hits,
)
from app.queries.encoding import (
    FeatureInfo,
    encoding_dictionary,
    feature_info,
    match_protein,
    published_sae_choices,
)
from app.queries.errors import (
    BadCursor,
    NotFound,
)
from app.queries.export import (
    export_features,
    exportable_sae,
)
from app.queries.feature_detail import (
    AA_RULE,
    aa_profile,
    analysis_payload,
    feature_detail,
    top_examples_by_bin,
    track_scale,
)
from app.queries.features import (
    CURSOR_PATTERN,
    decode_cursor,
    encode_cursor,
    list_features,
)
from app.queries.findings import (
    RunFindings,
    dictionary_kind,
    gather_findings,
)
from app.queries.go import (
    DEFAULT_ALPHA,
    LENGTH_DRIVEN_SHARE,
    feature_go_hits,
    go_alpha,
    go_alphas,
    go_hit,
    go_length_control,
    go_protocols,
    go_refs,
    go_summary,
    go_term_detail,
    length_control,
    length_driven,
    length_explained,
    parent_ids,
)
from app.queries.models import *  # noqa: F403  (the one schema, re-exported whole)
from app.queries.proteins import (
    protein_detail,
    protein_sequence,
    stored_structure,
    structure_out,
    structures_of,
)
from app.queries.publication import (
    current_token,
)
from app.queries.saes import (
    MAP_METHOD,
    feature_map,
    feature_map_size,
    has_feature_map,
    list_saes,
    mapped_sae_ids,
    run_models,
    sae_detail,
)
from app.queries.scope import (
    newest_published_run_id,
    published,
    published_run,
    published_run_named,
    published_runs,
    published_sae,
    published_sae_ids,
)
from app.queries.search import (
    search,
)
from app.queries.stored import (
    stored_concept_ids,
    stored_go_term_ids,
    stored_protein_ids,
    stored_structure_ids,
)
from app.queries.worklist import (
    CSV_COLUMNS,
    FeatureWorklist,
    GoWorklist,
    TermWorklist,
    WorklistCandidate,
    WorklistEvidence,
    csv_rows,
    feature_worklist,
    go_worklist,
    worklist_summaries,
)

__all__ = [
    "AA_RULE",
    "CSV_COLUMNS",
    "CURSOR_PATTERN",
    "DEFAULT_ALPHA",
    "LENGTH_DRIVEN_SHARE",
    "MAP_METHOD",
    "AlignmentRow",
    "BadCursor",
    "ConceptIndexRow",
    "DictionaryAlignments",
    "FeatureInfo",
    "FeatureWorklist",
    "GoWorklist",
    "LabelledExample",
    "NotFound",
    "RunFindings",
    "TermWorklist",
    "WorklistCandidate",
    "WorklistEvidence",
    "aa_profile",
    "analysis_payload",
    "concept_alignments",
    "concept_by_name",
    "concept_example",
    "concept_examples",
    "concept_index",
    "csv_rows",
    "current_token",
    "decode_cursor",
    "dictionary_kind",
    "domain_control",
    "domain_hit",
    "domains_payload",
    "encode_cursor",
    "encoding_dictionary",
    "example_candidates",
    "export_features",
    "exportable_sae",
    "family_url",
    "feature_detail",
    "feature_domain_hits",
    "feature_go_hits",
    "feature_info",
    "feature_map",
    "feature_map_size",
    "feature_worklist",
    "gather_findings",
    "go_alpha",
    "go_alphas",
    "go_hit",
    "go_length_control",
    "go_summary",
    "go_protocols",
    "go_refs",
    "go_term_detail",
    "go_worklist",
    "has_feature_map",
    "length_control",
    "length_driven",
    "length_explained",
    "list_features",
    "list_saes",
    "mapped_sae_ids",
    "match_protein",
    "newest_published_run_id",
    "parent_ids",
    "protein_detail",
    "protein_sequence",
    "published",
    "published_run",
    "published_run_named",
    "published_runs",
    "published_sae",
    "published_sae_choices",
    "published_sae_ids",
    "run_models",
    "sae_detail",
    "search",
    "stored_concept_ids",
    "stored_go_term_ids",
    "stored_protein_ids",
    "stored_structure",
    "stored_structure_ids",
    "structure_out",
    "structures_of",
    "top_examples_by_bin",
    "track_rows",
    "track_scale",
    "worklist_summaries",
    *_models.__all__,
]
