"""The notebook client against a live server: encode, export, and the py3Dmol view's contents."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from app.client import ApiError, ProtSAEClient, activation_colour
from app.store.schema import Protein, Structure
from tests.encode_fixtures import live_server  # noqa: F401

pytestmark = pytest.mark.slow


def stored(url: str, accession: str) -> tuple[str, Structure]:
    engine = create_engine(url)
    with Session(engine) as session:
        protein = session.scalars(select(Protein).where(Protein.accession == accession)).one()
        structure = session.scalars(
            select(Structure).where(Structure.protein_id == protein.id)
        ).first()
        assert structure is not None
        session.expunge_all()
    engine.dispose()
    return protein.sequence, structure


def stored_sequence(url: str, accession: str) -> str:
    engine = create_engine(url)
    with Session(engine) as session:
        sequence = session.scalars(
            select(Protein.sequence).where(Protein.accession == accession)
        ).one()
    engine.dispose()
    return sequence


def test_encode_and_export(live_server: str, demo_store) -> None:  # noqa: F811
    with ProtSAEClient(live_server) as api:
        runs = api.runs()
        assert runs[0]["saes"][0]["id"] == demo_store.sae_id
        sequence = stored_sequence(demo_store.url, demo_store.accessions[5])
        result = api.encode([sequence, sequence[:60]], demo_store.sae_id, top_n=5)
        assert [r["length"] for r in result["results"]] == [len(sequence), 60]
        assert len(result["results"][0]["features"]) == 5
        assert len(api.export(demo_store.sae_id)["features"]) == demo_store.n_features
        with pytest.raises(ApiError, match="invalid character 'J' at position 3"):
            api.encode("MKJ", demo_store.sae_id)


def test_show_feature_colours_the_stored_structure(live_server: str, demo_store) -> None:  # noqa: F811
    accession = demo_store.structure_accessions[2]
    sequence, structure = stored(demo_store.url, accession)
    with ProtSAEClient(live_server) as api:
        top = api.encode(sequence, demo_store.sae_id, top_n=1)["results"][0]["features"][0]
        view = api.show_feature({"sae_id": demo_store.sae_id, "index": top["index"]},
                                {"sequence": sequence})  # fmt: skip
    js = view.startjs + view.endjs
    with gzip.open(Path(structure.file_path), "rt") as handle:
        first_atom = next(line for line in handle if line.startswith("ATOM"))
    assert first_atom.strip()[:40] in js  # the real coordinates went into the model
    # The structure residue where the feature is strongest gets its colour on the right chain.
    values = top["values"]
    k = max((i for i, p in enumerate(structure.sequence_positions) if p >= 0),
            key=lambda i: values[structure.sequence_positions[i]])  # fmt: skip
    resi = int(structure.residue_ids[k])
    colour = activation_colour(values[structure.sequence_positions[k]], max(values))
    assert colour != "#ffffff"
    assert (
        f'{{"resi": {resi}, "chain": "{structure.chain}"}},{{"cartoon": {{"color": "{colour}"}}}}'
        in js
    )
    assert js.count(".setStyle(") > 10


def test_show_feature_with_a_user_structure(live_server: str, demo_store) -> None:  # noqa: F811
    sequence = next(
        stored_sequence(demo_store.url, a)
        for a in demo_store.accessions
        if a not in demo_store.structure_accessions
    )
    pdb = "ATOM      1  CA  MET A   1       0.000   0.000   0.000  1.00  0.00           C\n"
    with ProtSAEClient(live_server) as api:
        view = api.show_feature(3, sequence, sae_id=demo_store.sae_id, structure=pdb)
        with pytest.raises(ValueError, match="no stored structure"):
            api.show_feature(3, sequence, sae_id=demo_store.sae_id)
    assert "CA  MET A   1" in view.startjs + view.endjs


def test_read_api_and_show_feature_by_accession(live_server: str, demo_store) -> None:  # noqa: F811
    accession = demo_store.structure_accessions[0]
    with ProtSAEClient(live_server) as api:
        features = api.list_features(demo_store.sae_id)
        assert features and all("index" in f for f in features)
        one = api.get_feature(features[0]["id"])
        assert one["feature"]["index"] == features[0]["index"]
        view = api.show_feature(one, accession)  # the detail dict carries its SAE
    assert "addModel(" in view.startjs + view.endjs and "ATOM" in view.startjs + view.endjs


def test_client_types_mirror_the_api_models() -> None:
    """The client's TypedDicts name only fields the API's response models have (no drift)."""
    from app import client
    from app.queries import models

    pairs = ((client.FeatureHit, models.FeatureHit), (client.StructureRef, models.StructureRef),
             (client.SequenceResult, models.SequenceResult),
             (client.EncodeResult, models.EncodeResponse))  # fmt: skip
    for mirror, model in pairs:
        missing = set(mirror.__annotations__) - set(model.model_fields)
        assert not missing, f"{mirror.__name__} names {missing}, which {model.__name__} lacks"


def test_activation_colour_is_the_sites_scale() -> None:
    assert activation_colour(0.0, 1.0) == "#ffffff"
    assert activation_colour(1.0, 1.0) == "#b3261e"  # app.render.POSITIVE, full step
    assert activation_colour(-1.0, 1.0) == "#0b57d0"  # NEGATIVE
