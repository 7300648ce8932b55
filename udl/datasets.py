"""The one owner of a run's on-disk layout: folder and file names, and how its datasets and
fitted tables are encoded.

A run lives in ``<output_dir>/runs/<run_id>/``; `RunLayout` names every folder and file in it,
and the constants below name the files inside the folders a step receives as a plain path
(``models/``), so that no other module spells a file name of the layout. The features dataset
(TF-IDF rows as index/value lists), the preprocess step's tables (IDF, vocabulary) and the
embeddings dataset (`doc_id`, fixed-size-list `embedding`, `anomaly_score`, `has_features`)
are encoded and decoded here, with the one decoder of vector columns, so that a step reading
another step's output loads neither torch nor FAISS nor the other step's code.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp
from numpy.typing import NDArray

from udl import schema as S
from udl.errors import SchemaError
from udl.storage import dataset_parts, sample_rows

__all__ = [
    "ALIGNMENT_FILE",
    "CENTROIDS_FILE",
    "ENCODER_CONFIG_FILE",
    "ENCODER_DIR",
    "ENCODER_TOKENIZER_FILE",
    "ENCODER_WEIGHTS_FILE",
    "METRICS_FILE",
    "NEIGHBOURS_INDEX_FILE",
    "NEIGHBOUR_IDS_FILE",
    "REPORT_FILE",
    "REPORT_SAMPLE_FILE",
    "TFIDF_FILE",
    "VOCABULARY_FILE",
    "Embeddings",
    "KeptFeatures",
    "RunLayout",
    "aligned_parts",
    "decode_vectors",
    "embeddings_table",
    "encode_vectors",
    "feature_width",
    "features_table",
    "mark_latest",
    "no_features_mask",
    "read_csr",
    "read_embeddings",
    "read_feature_width",
    "read_has_features",
    "read_idf",
    "read_kept_features",
    "read_vocabulary",
    "tfidf_table",
]

# models/: the preprocess step's kept features (feature, df, idf) and their words.
TFIDF_FILE = "tfidf.parquet"
VOCABULARY_FILE = "vocabulary.parquet"
# models/encoder/: the encoder checkpoint (config, then tensors loaded with weights_only=True).
ENCODER_DIR = "encoder"
ENCODER_CONFIG_FILE = "config.json"
ENCODER_WEIGHTS_FILE = "weights.pt"
ENCODER_TOKENIZER_FILE = "tokenizer.json"  # the two-view student's tokenizer
# models/: the neighbours step's FAISS index and the doc id of each of its rows.
NEIGHBOURS_INDEX_FILE = "neighbours.faiss"
NEIGHBOUR_IDS_FILE = "neighbour_ids.parquet"
# models/: the cluster step's centroids (row i = cluster i) and its cross-run id alignment.
CENTROIDS_FILE = "centroids.npy"
ALIGNMENT_FILE = "alignment.json"
# Parquet metadata of every features part and of tfidf.parquet: the hashed feature space's
# width, so that a reader rebuilds the matrices without the preprocess config.
WIDTH_KEY = b"udl.n_features"
# report/
METRICS_FILE = "metrics.json"
REPORT_FILE = "index.html"
REPORT_SAMPLE_FILE = "sample.parquet"  # the sampled rows' vectors, for the next run's report


@dataclass(frozen=True)
class RunLayout:
    """Paths of one run: ``<output_dir>/runs/<run_id>/...`` (the output contract)."""

    output_dir: Path
    run_id: str

    @property
    def run_dir(self) -> Path:
        return self.output_dir / "runs" / self.run_id

    @property
    def corpus(self) -> Path:
        return self.run_dir / "corpus"

    @property
    def rejects(self) -> Path:
        return self.run_dir / "rejects"

    @property
    def features(self) -> Path:
        return self.run_dir / "features"

    @property
    def embeddings(self) -> Path:
        return self.run_dir / "embeddings"

    @property
    def assignments(self) -> Path:
        return self.run_dir / "assignments"

    @property
    def neighbours(self) -> Path:
        """Each document's most similar documents (the optional neighbours step)."""
        return self.run_dir / "neighbours"

    @property
    def models(self) -> Path:
        """Fitted state: TF-IDF vocabulary, encoder checkpoint, centroids."""
        return self.run_dir / "models"

    @property
    def encoder(self) -> Path:
        return self.models / ENCODER_DIR

    @property
    def centroids(self) -> Path:
        return self.models / CENTROIDS_FILE

    @property
    def alignment(self) -> Path:
        return self.models / ALIGNMENT_FILE

    @property
    def steps(self) -> Path:
        """One small JSON record per completed step (rows, timings, chosen values)."""
        return self.run_dir / "steps"

    def step_record(self, step: str) -> Path:
        return self.steps / f"{step}.json"

    @property
    def report(self) -> Path:
        return self.run_dir / "report"

    @property
    def metrics(self) -> Path:
        return self.report / METRICS_FILE

    @property
    def report_html(self) -> Path:
        return self.report / REPORT_FILE

    @property
    def report_sample(self) -> Path:
        return self.report / REPORT_SAMPLE_FILE

    @property
    def cache(self) -> Path:
        """Prefect's persisted step results (the cache records), named by step key."""
        return self.run_dir / "cache"

    @property
    def update(self) -> Path:
        """The update policy the run applied, why, what changed and the drift check."""
        return self.run_dir / "update.json"

    @property
    def manifest(self) -> Path:
        return self.run_dir / "manifest.json"

    @property
    def latest(self) -> Path:
        return self.output_dir / "latest"


def mark_latest(layout: RunLayout) -> None:
    """Point ``<output_dir>/latest`` at this run (a relative symlink, swapped atomically)."""
    tmp = layout.output_dir / f".latest.tmp-{uuid.uuid4().hex[:12]}"
    os.symlink(Path("runs") / layout.run_id, tmp, target_is_directory=True)
    os.replace(tmp, layout.latest)


def aligned_parts(*datasets: Path) -> list[tuple[Path, ...]]:
    """The parts of datasets written part for part from one another (corpus, features,
    embeddings, assignments), zipped: part i of each holds the same documents in order.

    Part counts and each part's row count (read from the Parquet footers, no data) must agree.

    Raises:
        SchemaError: naming the first two datasets that disagree and where, e.g. a dataset left
            by another run or an interrupted copy.
    """
    parts = [dataset_parts(d) for d in datasets]
    first = parts[0]
    for dataset, other in zip(datasets[1:], parts[1:], strict=True):
        if len(other) != len(first):
            raise SchemaError(
                f"{dataset} has {len(other)} parts but {datasets[0]} has {len(first)}: "
                "they were not written from one another; rerun the step that wrote the first"
            )
        for a, b in zip(first, other, strict=True):
            rows_a, rows_b = (
                pq.ParquetFile(a).metadata.num_rows,
                pq.ParquetFile(b).metadata.num_rows,
            )
            if rows_a != rows_b:
                raise SchemaError(
                    f"{b} has {rows_b} rows but {a} has {rows_a}: the datasets are not aligned; "
                    "rerun the step that wrote the first"
                )
    return list(zip(*parts, strict=True))


def decode_vectors(column: pa.Array | pa.ChunkedArray) -> NDArray[np.float32]:
    """A fixed-size-list float column without nulls as a float32 array (n, list_size)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    values = array.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(len(array), array.type.list_size).astype(np.float32, copy=False)


def encode_vectors(x: NDArray[np.float32]) -> pa.FixedSizeListArray:
    """A float32 array (n, dim) as a fixed-size-list column (the inverse of `decode_vectors`)."""
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), x.shape[1])


def no_features_mask(table: pa.Table) -> NDArray[np.bool_] | None:
    """Which rows of an assignments table have status no_features.

    None for runs older than the status column: every one of their documents was embedded and
    clustered, so their status follows from the cluster id (-1 is noise).
    """
    if S.STATUS not in table.column_names:
        return None
    return pc.fill_null(pc.equal(table.column(S.STATUS), S.NO_FEATURES), False).to_numpy(
        zero_copy_only=False
    )


def embeddings_table(
    doc_ids: list[str],
    vectors: NDArray[np.float32],
    scores: NDArray[np.float32],
    featured: NDArray[np.bool_] | None = None,
) -> pa.Table:
    """One `embeddings/` part: vectors (n, dim) float32, anomaly scores (n,) float32 and
    `has_features` (n,) bool (None: every document has features)."""
    dim = vectors.shape[1]
    if featured is None:
        featured = np.ones(len(doc_ids), np.bool_)
    return pa.Table.from_arrays(
        [
            pa.array(doc_ids, pa.string()),
            encode_vectors(vectors),
            pa.array(scores, pa.float32()),
            pa.array(featured, pa.bool_()),
        ],
        schema=S.embeddings_schema(dim),
    )


def read_embeddings(path: Path) -> tuple[list[str], NDArray[np.float32], NDArray[np.float32]]:
    """Doc ids, embeddings (n, dim) and anomaly scores of one embeddings part or dataset."""
    table = pq.read_table(path, columns=[S.DOC_ID, S.EMBEDDING, S.ANOMALY])
    vectors = decode_vectors(table.column(S.EMBEDDING))
    return table.column(S.DOC_ID).to_pylist(), vectors, table.column(S.ANOMALY).to_numpy()


def read_has_features(path: Path) -> NDArray[np.bool_]:
    """`has_features` (n,) of one embeddings part; all True for parts written before it existed."""
    schema = pq.read_schema(path)
    if S.HAS_FEATURES not in schema.names:
        return np.ones(pq.ParquetFile(path).metadata.num_rows, np.bool_)
    column = pq.read_table(path, columns=[S.HAS_FEATURES]).column(S.HAS_FEATURES)
    return column.to_numpy(zero_copy_only=False).astype(np.bool_)


class Embeddings:
    """The embeddings dataset of a run, as the steps after embedding read it.

    Attributes:
        folder: the dataset folder.
        parts: its part files, in corpus order.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.parts = dataset_parts(folder)
        self._has_features: list[NDArray[np.bool_]] | None = None

    def has_features(self) -> list[NDArray[np.bool_]]:
        """`has_features` of each part (read once)."""
        if self._has_features is None:
            self._has_features = [read_has_features(p) for p in self.parts]
        return self._has_features

    def featured_shape(self) -> tuple[int, int]:
        """(documents with features, vector width), read without loading a vector."""
        dim = pq.read_schema(self.parts[0]).field(S.EMBEDDING).type.list_size
        return sum(int(mask.sum()) for mask in self.has_features()), dim

    def sample(self, size: int, seed: int) -> NDArray[np.float32]:
        """A seeded uniform sample (at most `size`, n x dim) of the vectors of documents with
        features; only the sampled rows stay in memory."""
        picks = sample_rows(self.parts, size, seed, self.has_features())
        blocks = [read_embeddings(self.parts[i])[1][rows] for i, rows in picks]
        return np.concatenate(blocks).astype(np.float32)

    def featured(self) -> NDArray[np.float32]:
        """Every vector (n_featured, dim) of the documents with features, in corpus order."""
        return np.concatenate(
            [
                read_embeddings(p)[1][mask]
                for p, mask in zip(self.parts, self.has_features(), strict=True)
            ]
        )


def _with_width(table: pa.Table, n_features: int) -> pa.Table:
    return table.replace_schema_metadata({WIDTH_KEY: str(n_features).encode()})


def feature_width(schema: pa.Schema, where: str, legacy: int | None = None) -> int:
    """The width of the hashed feature space recorded with a features part or TF-IDF table.

    Args:
        schema: the table's Arrow schema (with its Parquet metadata).
        where: the table, for the error message.
        legacy: the width to assume for a table written before widths were recorded (the
            run's ``preprocess.n_features``, where the caller has the run's config).

    Raises:
        SchemaError: no recorded width and no `legacy` width.
    """
    width = (schema.metadata or {}).get(WIDTH_KEY)
    if width is not None:
        return int(width)
    if legacy is None:
        raise SchemaError(
            f"{where} has no recorded width ({WIDTH_KEY.decode()} in its Parquet metadata): it "
            "was written by an older udl; run the pipeline again in a new run"
        )
    return legacy


def features_table(doc_ids: pa.Array, matrix: sp.csr_matrix) -> pa.Table:
    """One `features/` part: each document's TF-IDF row as parallel index and value lists,
    with the matrix's width (n_features) in the schema metadata."""
    offsets = pa.array(matrix.indptr.astype(np.int32))
    indices = pa.ListArray.from_arrays(offsets, pa.array(matrix.indices.astype(np.int32)))
    values = pa.ListArray.from_arrays(offsets, pa.array(matrix.data.astype(np.float32)))
    table = pa.Table.from_arrays([doc_ids, indices, values], schema=S.FEATURES_SCHEMA)
    return _with_width(table, matrix.shape[1])


def read_csr(table: pa.Table, legacy_width: int | None = None) -> sp.csr_matrix:
    """Rebuild the float32 CSR matrix (n_docs, n_features) of a features table (or some of
    its rows or columns, as long as the schema metadata came along); `legacy_width`: see
    `feature_width`."""
    indices = table.column(S.INDICES).combine_chunks()
    values = table.column(S.VALUES).combine_chunks()
    indptr = indices.offsets.to_numpy().astype(np.int64)
    indptr -= indptr[0]
    return sp.csr_matrix(
        (values.flatten().to_numpy(), indices.flatten().to_numpy(), indptr),
        shape=(table.num_rows, feature_width(table.schema, "a features part", legacy_width)),
        dtype=np.float32,
    )


@dataclass(frozen=True)
class KeptFeatures:
    """The hashed features the TF-IDF pruning kept.

    Attributes:
        ids: int64 feature ids, sorted.
        by_df: the same ids, most frequent first (ties in id order).
    """

    ids: NDArray[np.int64]
    by_df: NDArray[np.int64]

    def top(self, count: int) -> NDArray[np.int64]:
        """The `count` most frequent kept features, sorted."""
        return np.sort(self.by_df[:count])


def read_kept_features(models_dir: Path) -> KeptFeatures:
    """The preprocess step's kept features, from `models/tfidf.parquet`."""
    table = pq.read_table(models_dir / TFIDF_FILE)
    features = table.column("feature").to_numpy().astype(np.int64)
    order = np.argsort(-table.column("df").to_numpy(), kind="stable")
    return KeptFeatures(features, features[order])


def tfidf_table(
    df: NDArray[np.int64], idf: NDArray[np.float32], kept: NDArray[np.int64]
) -> pa.Table:
    """`models/tfidf.parquet`: document frequency and IDF of the `kept` features, with the
    feature space's width (len(idf)) in the schema metadata."""
    table = pa.table({"feature": kept.astype(np.int32), "df": df[kept], "idf": idf[kept]})
    return _with_width(table, len(idf))


def read_feature_width(models_dir: Path, legacy: int | None = None) -> int:
    """n_features of the run's hashed feature space, from `models/tfidf.parquet`'s footer;
    `legacy`: see `feature_width`."""
    path = models_dir / TFIDF_FILE
    return feature_width(pq.read_schema(path), str(path), legacy)


def read_idf(models_dir: Path, legacy: int | None = None) -> NDArray[np.float32]:
    """Dense IDF vector (n_features,); pruned features have weight 0. `legacy`: see
    `feature_width`."""
    path = models_dir / TFIDF_FILE
    table = pq.read_table(path)
    idf = np.zeros(feature_width(table.schema, str(path), legacy), np.float32)
    idf[table.column("feature").to_numpy()] = table.column("idf").to_numpy()
    return idf


def read_vocabulary(models_dir: Path) -> dict[int, str]:
    """Hashed feature id → its most frequent token, for naming keywords."""
    table = pq.read_table(models_dir / VOCABULARY_FILE)
    return dict(
        zip(table.column("feature").to_pylist(), table.column("token").to_pylist(), strict=True)
    )
