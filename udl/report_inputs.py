"""What the report reads from a run folder, part by part, never the whole corpus.

One streamed pass over the aligned parts (`stream_parts`; the sample of embeddings is
`udl.report_sample`), rejected rows by reason (`rejects_by_reason`) and the clustering step's
cluster-id alignment (`read_alignment`). Documents whose status is ``no_features`` (contract
with the clustering step) are kept out of everything computed from vectors.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from numpy.typing import NDArray

from udl import schema as S
from udl.config import RuntimeConfig
from udl.datasets import RunLayout, aligned_parts, no_features_mask, read_csr
from udl.describe import ClusterDescriber
from udl.evaluate import Contingency, ContingencyCounter
from udl.parallel import dask_client, iter_parts
from udl.storage import dataset_parts, read_json

__all__ = [
    "NO_FEATURES_REASON",
    "read_alignment",
    "read_centroids",
    "rejects_by_reason",
    "stream_parts",
]

log = logging.getLogger(__name__)

NO_FEATURES_REASON = (
    "every token of the text was dropped (empty after normalisation, stop words only, or words "
    "rarer than preprocess.min_df), so the TF-IDF encoders have nothing to embed; they are in "
    "no cluster"
)


def _assignment_columns(part: Path, wanted: list[str]) -> list[str]:
    names = pq.read_schema(part).names
    return wanted + [name for name in (S.STATUS, S.LABEL) if name in names]


def _describe_part(
    parts: tuple[Path, Path, Path, Path],
    describer: ClusterDescriber,
    counter: ContingencyCounter | None,
    columns: list[str],
    legacy_width: int,
) -> None:
    """Add one part's documents (assignments, corpus, features, embeddings) to `describer`
    and, for a labelled run, to `counter`."""
    assign_part, corpus_part, features_part, emb_part = parts
    assign = pq.read_table(assign_part, columns=columns)
    clusters = assign.column(S.CLUSTER_ID).to_numpy()
    describer.update(
        doc_ids=assign.column(S.DOC_ID),
        texts=pq.read_table(corpus_part, columns=[S.TEXT]).column(S.TEXT),
        clusters=clusters,
        distance=assign.column(S.DISTANCE).to_numpy(),
        anomaly=pq.read_table(emb_part, columns=[S.ANOMALY]).column(S.ANOMALY).to_numpy(),
        tfidf=read_csr(pq.read_table(features_part, columns=[S.INDICES, S.VALUES]), legacy_width),
        no_features=no_features_mask(assign),
    )
    if counter is not None:
        counter.update(assign.column(S.LABEL), clusters)


def _described_on_worker(
    parts: tuple[Path, Path, Path, Path],
    blank: ClusterDescriber,
    columns: list[str],
    legacy_width: int,
) -> tuple[ClusterDescriber, ContingencyCounter | None]:
    describer = blank.fresh()
    counter = ContingencyCounter() if S.LABEL in columns else None
    _describe_part(parts, describer, counter, columns, legacy_width)
    return describer, counter


def stream_parts(
    layout: RunLayout,
    describer: ClusterDescriber,
    legacy_width: int,
    workers: RuntimeConfig | None = None,
) -> Contingency | None:
    """One pass over the aligned parts; returns the label contingency of labelled runs.
    `legacy_width`: the features' width where a part predates its recording.

    Documents without features count in the contingency as unclustered (with noise, -1), so
    that a run does not score better for leaving documents out.

    With `workers` (`udl.parallel.dask_client`'s settings) each part is described on a Dask
    worker and only its summary (sizes, keyword sums, its nearest and most anomalous
    documents, label counts) comes back, merged in part order: the same result as here.
    """
    assign_parts = dataset_parts(layout.assignments)
    columns = _assignment_columns(assign_parts[0], [S.DOC_ID, S.CLUSTER_ID, S.DISTANCE])
    counter = ContingencyCounter() if S.LABEL in columns else None
    parts = aligned_parts(layout.assignments, layout.corpus, layout.features, layout.embeddings)
    if workers is None:
        for paths in parts:
            _describe_part(paths, describer, counter, columns, legacy_width)
    else:
        with dask_client(workers):
            # Merged as they arrive: the flow holds the summaries that finished early, not
            # one per part (each carries keyword sums as wide as the vocabulary).
            for part_describer, part_counter in iter_parts(
                _described_on_worker,
                parts,
                "describe-part",
                blank=describer.fresh(),
                columns=columns,
                legacy_width=legacy_width,
            ):
                describer.merge(part_describer)
                if counter is not None and part_counter is not None:
                    counter.merge(part_counter)
    return counter.result() if counter is not None else None


def rejects_by_reason(layout: RunLayout, ingest: dict[str, Any]) -> list[dict[str, Any]]:
    """Rejected rows by reason, most frequent first, each with its first example.

    Counts come from the ingest step record (``rejected_by_reason``), or, for runs older than
    it, from the ``reason`` column of ``rejects/``; examples are read part by part until every
    reason has one.
    """
    counts: Counter[str] = Counter(ingest.get("rejected_by_reason") or {})
    recorded = bool(counts)
    examples: dict[str, dict[str, Any]] = {}
    parts = dataset_parts(layout.rejects) if layout.rejects.is_dir() else []
    for part in parts:
        names = pq.read_schema(part).names
        table = pq.read_table(
            part, columns=[c for c in (S.REASON, S.DETAIL, S.ROW, S.LINE) if c in names]
        )
        reasons = table.column(S.REASON)
        for entry in pc.value_counts(reasons).to_pylist():
            reason = entry["values"]
            if not recorded:
                counts[reason] += entry["counts"]
            if reason not in examples:
                first = table.slice(int(pc.index(reasons, reason).as_py()), 1).to_pylist()[0]
                examples[reason] = first
        if recorded and set(counts) <= set(examples):
            break
    return [
        {
            "reason": reason,
            "count": count,
            "example_detail": examples.get(reason, {}).get(S.DETAIL) or "",
            "example_row": examples.get(reason, {}).get(S.ROW),
            "example_line": examples.get(reason, {}).get(S.LINE),
        }
        for reason, count in counts.most_common()
    ]


def read_alignment(layout: RunLayout, previous: RunLayout) -> dict[int, int | None] | None:
    """The clustering step's ``models/alignment.json`` when it aligned ids with `previous`.

    The clustering step (``udl.cluster.assign``) records the run it followed as
    ``previous_models`` (that run's ``models/`` folder) and ``status``: ``"aligned"`` with a
    ``mapping`` (``{"<current id>": <previous id or null>}``), or ``"skipped"`` with a
    ``reason`` and no mapping. Skipped alignments and alignments with another run are ignored.
    """
    path = layout.alignment
    if not path.exists():
        return None
    alignment = read_json(path)
    against = alignment.get("previous_models")
    if against is None or Path(against).parent.name != previous.run_id:
        log.info("%s is not against run %s; matching centroids instead", path, previous.run_id)
        return None
    if alignment.get("status") != "aligned":
        log.info("cluster ids were not aligned (%s); matching centroids", alignment.get("reason"))
        return None
    return {int(c): None if p is None else int(p) for c, p in alignment["mapping"].items()}


def read_centroids(layout: RunLayout) -> NDArray[np.float32]:
    """A run's centroids (k, dim); an empty (0, 0) array when the run has none saved."""
    path = layout.centroids
    return np.load(path) if path.exists() else np.zeros((0, 0), np.float32)


def read_similar(
    layout: RunLayout, doc_ids: list[str], per_doc: int = 3
) -> dict[str, list[dict[str, Any]]]:
    """The `per_doc` nearest neighbours of each of `doc_ids` (from ``neighbours/``), each with
    its similarity, cluster and text; empty when the run has no neighbours step."""
    if not layout.neighbours.is_dir() or not doc_ids:
        return {}
    hits = pq.read_table(
        layout.neighbours,
        filters=[(S.DOC_ID, "in", doc_ids), ("rank", "<=", per_doc)],
    ).sort_by([(S.DOC_ID, "ascending"), ("rank", "ascending")])
    wanted = [(S.DOC_ID, "in", list(set(hits.column("neighbour_id").to_pylist())))]
    clusters = pq.read_table(layout.assignments, columns=[S.DOC_ID, S.CLUSTER_ID], filters=wanted)
    texts = pq.read_table(layout.corpus, columns=[S.DOC_ID, S.TEXT], filters=wanted)
    cluster_of = dict(zip(*clusters.to_pydict().values(), strict=True))
    text_of = dict(zip(*texts.to_pydict().values(), strict=True))
    similar: dict[str, list[dict[str, Any]]] = {}
    for row in hits.to_pylist():
        neighbour = row["neighbour_id"]
        similar.setdefault(row[S.DOC_ID], []).append(
            {
                "doc_id": neighbour,
                "similarity": row["similarity"],
                "cluster_id": cluster_of.get(neighbour, -1),
                "text": text_of.get(neighbour, ""),
            }
        )
    return similar
