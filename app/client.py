"""A small typed client for the ProtSAE Explorer API, for notebooks.

    from app.client import ProtSAEClient
    api = ProtSAEClient("http://127.0.0.1:8000")
    result = api.encode(["MVLSPADKTNVKAAWGKV..."], sae_id=1)
    api.show_feature({"sae_id": 1, "index": 58}, "P69905")   # a py3Dmol view in Jupyter

``show_feature`` colours the protein's structure white→red by the feature's per-residue
activations, computed by the server's encoder on the protein's sequence (py3Dmol loads 3Dmol.js
from its CDN inside Jupyter).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict

import httpx

from app.render import level, level_rgb


class ApiError(RuntimeError):
    """The API answered with its error shape; ``status`` and ``message`` come from it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


# The TypedDicts below mirror the API's response models (``app.queries.models.encode``) for type
# checkers in a notebook: a client parses JSON, it does not validate it again; tests/test_client.py
# checks that every key here is a field of the model it mirrors.
class FeatureHit(TypedDict):
    index: int
    feature_id: int | None
    label: str | None
    explanation: str | None
    max: float
    mean: float
    max_position: int | None
    values: list[float] | None


class StructureRef(TypedDict):
    structure_id: int
    chain: str
    format: str
    url: str
    residue_ids: list[str]
    sequence_positions: list[int]


class SequenceResult(TypedDict):
    id: str
    sequence: str
    length: int
    features: list[FeatureHit]
    quality: dict[str, Any]
    match: dict[str, Any] | None


class EncodeResult(TypedDict):
    sae_id: int
    level: str
    provenance: dict[str, Any]
    results: list[SequenceResult]


def activation_colour(value: float, top: float) -> str:
    """The site's residue colour (``app.render``'s steps) of ``value`` on a scale whose full
    colour is ``top``, as ``#rrggbb``: white at 0, red for positive, blue for negative values."""
    step = level(value, top)
    r, g, b = level_rgb(step, negative=value < 0) if step else (255, 255, 255)
    return f"#{r:02x}{g:02x}{b:02x}"


class ProtSAEClient:
    """Typed access to ``/api/v1``; pass ``http`` to reuse an ``httpx.Client``."""

    def __init__(
        self, base_url: str = "http://127.0.0.1:8000", *, timeout: float = 120.0,
        http: httpx.Client | None = None,
    ) -> None:  # fmt: skip
        self.http = http or httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ProtSAEClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _json(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:500]
            raise ApiError(response.status_code, message)
        return response.json()

    def runs(self) -> list[dict[str, Any]]:
        """Published runs with their dictionaries."""
        return list(self._json(self.http.get("/api/v1/runs")))

    def get_sae(self, sae_id: int) -> dict[str, Any]:
        """One dictionary: its training metrics and config, feature count, ``has_map``."""
        return dict(self._json(self.http.get(f"/api/v1/saes/{sae_id}")))

    def list_features(self, sae_id: int, **params: Any) -> list[dict[str, Any]]:
        """Features of one dictionary (filters/sorting as the API documents them)."""
        data = self._json(self.http.get(f"/api/v1/saes/{sae_id}/features", params=params))
        return list(data["items"] if isinstance(data, dict) and "items" in data else data)

    def get_feature(self, feature_id: int) -> dict[str, Any]:
        """One feature with its stats, explanation, GO hits and top examples."""
        return dict(self._json(self.http.get(f"/api/v1/features/{feature_id}")))

    def feature_map(self, sae_id: int) -> dict[str, Any]:
        """The dictionary's feature map, column by column (``feature_id``, ``index``, ``x``,
        ``y``, ``density``, ``label``, ...): e.g. ``pandas.DataFrame`` of everything but the
        scalars. ``ApiError`` 404 when it has none (the neuron baseline, older runs)."""
        return dict(self._json(self.http.get(f"/api/v1/saes/{sae_id}/map")))

    def get_protein(self, accession: str) -> dict[str, Any]:
        return dict(self._json(self.http.get(f"/api/v1/proteins/{accession}")))

    def export(self, sae_id: int) -> dict[str, Any]:
        """Every feature of a dictionary with labels and GO hits."""
        return dict(self._json(self.http.get(f"/api/v1/saes/{sae_id}/export.json")))

    def encode(
        self, sequences: str | Sequence[str], sae_id: int, *, top_n: int = 20,
        rank_by: str = "max", hide_dense: bool = False, include_residues: bool = True,
    ) -> EncodeResult:  # fmt: skip
        """Encode one or several sequences (bare or FASTA) with the dictionary ``sae_id``."""
        items = [sequences] if isinstance(sequences, str) else list(sequences)
        body = {"sae_id": sae_id, "sequences": items, "top_n": top_n, "rank_by": rank_by,
                "hide_dense": hide_dense, "include_residues": include_residues}  # fmt: skip
        result: EncodeResult = self._json(self.http.post("/api/v1/encode", json=body))
        return result

    def feature_track(
        self, sae_id: int, index: int, sequence: str
    ) -> tuple[list[float], SequenceResult]:
        """The feature's per-residue values on ``sequence`` (zeros when it is not active)."""
        result = self.encode(sequence, sae_id, top_n=1000)["results"][0]
        for hit in result["features"]:
            if hit["index"] == index:
                return list(hit["values"] or []), result
        return [0.0] * result["length"], result

    def show_feature(
        self, feature: int | dict[str, Any], protein: str | dict[str, Any], *,
        sae_id: int | None = None, structure: str | None = None, structure_format: str = "pdb",
        width: int = 640, height: int = 480,
    ) -> Any:  # fmt: skip
        """A py3Dmol view of ``protein``'s structure coloured by ``feature`` per residue.

        ``feature``: a feature dict (``index`` and ``sae_id``, as the API returns) or a latent
        index with ``sae_id``. ``protein``: an accession, a sequence, or a dict with
        ``sequence``. The structure is the stored one matching the sequence, or ``structure``
        (PDB/mmCIF text whose residue numbers are the sequence positions, 1-based).
        """
        import py3Dmol

        if isinstance(feature, dict) and "feature" in feature:  # get_feature()'s detail shape
            feature = {**feature["feature"], "sae_id": feature["sae"]["id"]}
        index = feature if isinstance(feature, int) else int(feature["index"])
        sae = sae_id if sae_id is not None else (
            None if isinstance(feature, int) else feature.get("sae_id")
        )  # fmt: skip
        if sae is None:
            raise ValueError("give sae_id (or a feature dict carrying it)")
        sequence = self._sequence_of(protein)
        values, result = self.feature_track(int(sae), index, sequence)
        top = max(values, default=0.0)
        view = py3Dmol.view(width=width, height=height)
        chain_pairs: list[tuple[str | None, str, int]]
        if structure is not None:
            view.addModel(structure, structure_format)
            view.setStyle({}, {"cartoon": {"color": "#dddddd"}})
            chain_pairs = [(None, str(pos + 1), pos) for pos in range(len(values))]
        else:
            match = result.get("match") or {}
            refs: list[StructureRef] = list(match.get("structures") or [])
            if not refs:
                raise ValueError("no stored structure matches this sequence; pass structure=")
            ref = refs[0]
            text = self.http.get(ref["url"]).text
            view.addModel(text, "cif" if ref["format"] == "mmcif" else "pdb")
            view.setStyle({}, {"cartoon": {"color": "#dddddd"}})
            chain_pairs = [
                (ref["chain"], rid, pos)
                for rid, pos in zip(ref["residue_ids"], ref["sequence_positions"], strict=True)
                if pos >= 0
            ]
        for chain, resi, pos in chain_pairs:
            if pos < len(values) and values[pos] > 0 and resi.lstrip("-").isdigit():
                selector: dict[str, Any] = {"resi": int(resi)}
                if chain is not None:
                    selector["chain"] = chain
                colour = activation_colour(values[pos], top)
                view.setStyle(selector, {"cartoon": {"color": colour}})
        view.zoomTo()
        return view

    def _sequence_of(self, protein: str | dict[str, Any]) -> str:
        if isinstance(protein, dict):
            return str(protein["sequence"])
        letters = protein.replace("\n", "").strip()
        if letters.isalpha() and letters.isupper() and len(letters) > 12:
            return letters  # a sequence, not an accession
        return str(self.get_protein(protein)["sequence"])
