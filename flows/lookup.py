"""`udl similar`: a run's documents closest to one of its documents or to a new text. A lookup,
not a run: no Prefect, nothing written. A new text goes through the run's IDF and encoder by
the same steps as `udl assign` (on a temporary dataset), so it lands where the run would have
put it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

from udl import schema as S
from udl.config import PipelineConfig
from udl.datasets import RunLayout, read_embeddings
from udl.embed import embed_with_checkpoint
from udl.features import transform_features
from udl.similar import Hit, find_similar
from udl.storage import write_part

__all__ = ["embed_text", "similar_lines"]


def embed_text(text: str, layout: RunLayout, config: PipelineConfig) -> NDArray[np.float32]:
    """The vector (1, dim) `layout`'s IDF and encoder give `text`; `config`: the run's."""
    with tempfile.TemporaryDirectory(prefix="udl-similar-") as folder:
        root = Path(folder)
        (root / "corpus").mkdir()
        write_part(pa.table({S.DOC_ID: ["query"], S.TEXT: [text]}), root / "corpus", 0)
        transform_features(root / "corpus", root / "features", layout.models, config.preprocess)
        embed_with_checkpoint(
            root / "corpus", root / "features", root / "embeddings", layout.encoder, config.encoder
        )
        return read_embeddings(root / "embeddings")[1]


def similar_lines(
    layout: RunLayout, config: PipelineConfig, k: int, doc_id: str | None, text: str | None
) -> list[str]:
    """The lines `udl similar` prints: a title, a header, then one line per document."""
    if doc_id is not None:
        hits: list[Hit] = find_similar(layout, k, doc_id=doc_id)
        query = f"document {doc_id}"
    else:
        assert text is not None
        hits = find_similar(layout, k, vector=embed_text(text, layout, config))
        query = "the text"
    lines = [
        f"run {layout.run_id}: the {len(hits)} documents most similar to {query}",
        f"{'rank':>4}  {'similarity':>10}  {'cluster':>7}  document",
    ]
    for hit in hits:
        snippet = " ".join(hit.text.split())[:100]
        lines.append(
            f"{hit.rank:>4}  {hit.similarity:>10.4f}  {hit.cluster_id:>7}  {hit.doc_id}: {snippet}"
        )
    return lines
