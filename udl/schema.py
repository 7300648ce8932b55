"""Column names and Arrow schemas of every dataset a run writes (the output contract)."""

from __future__ import annotations

import pyarrow as pa

__all__ = [
    "ASSIGNMENTS_SCHEMA",
    "DOC_ID",
    "FEATURES_SCHEMA",
    "HAS_FEATURES",
    "LABEL",
    "NEIGHBOURS_SCHEMA",
    "REJECTS_SCHEMA",
    "STATUS",
    "STATUSES",
    "TEXT",
    "embedding_field",
    "embeddings_schema",
]

DOC_ID = "doc_id"
TEXT = "text"
LABEL = "label"
SOURCE = "source"
ROW = "row"  # 1-based record number in its source file (see udl.raw)
LINE = "line"  # 1-based line where a record starts in its decompressed file (null: Parquet)
TRUNCATED = "truncated"
REASON = "reason"
DETAIL = "detail"
RAW = "raw"
INDICES = "indices"
VALUES = "values"
EMBEDDING = "embedding"
ANOMALY = "anomaly_score"
# False where the document had no feature left after preprocessing (every token pruned by
# min_df/max_df/stop words, or no word at all): its embedding means nothing and it is not
# clustered. Always True for the pretrained encoder and for supplied vectors.
HAS_FEATURES = "has_features"
CLUSTER_ID = "cluster_id"
DISTANCE = "distance"
CONFIDENCE = "confidence"
RUN_ID = "run_id"
# Per-document outcome of clustering: "clustered"; "noise" (DBSCAN, cluster_id -1); or
# "no_features" (cluster_id -1, distance NaN, confidence 0: see HAS_FEATURES).
STATUS = "status"
CLUSTERED = "clustered"
NOISE = "noise"
NO_FEATURES = "no_features"
STATUSES = (CLUSTERED, NOISE, NO_FEATURES)

# Corpus datasets have these columns first; then, with input.embedding_column, the supplied
# vectors as `embedding_field(dim)`; then the label and metadata columns as strings.
CORPUS_FIELDS = [
    pa.field(DOC_ID, pa.string(), nullable=False),
    pa.field(TEXT, pa.string(), nullable=False),
    pa.field(SOURCE, pa.string(), nullable=False),
    pa.field(ROW, pa.int64(), nullable=False),
    pa.field(TRUNCATED, pa.bool_(), nullable=False),
]

REJECTS_SCHEMA = pa.schema(
    [
        pa.field(SOURCE, pa.string(), nullable=False),
        pa.field(ROW, pa.int64()),
        pa.field(LINE, pa.int64()),
        pa.field(DOC_ID, pa.string()),
        pa.field(REASON, pa.string(), nullable=False),  # a code: invalid_utf8, empty_text, ...
        pa.field(DETAIL, pa.string()),  # the specifics, e.g. "expected 3 fields, got 4"
        pa.field(RAW, pa.string()),  # the offending value or line, truncated to max_chars
    ]
)

FEATURES_SCHEMA = pa.schema(
    [
        pa.field(DOC_ID, pa.string(), nullable=False),
        pa.field(INDICES, pa.list_(pa.int32()), nullable=False),
        pa.field(VALUES, pa.list_(pa.float32()), nullable=False),
    ]
)


def embedding_field(dim: int) -> pa.Field:
    """The `embedding` column: one fixed-size float32 vector of length `dim` per document."""
    return pa.field(EMBEDDING, pa.list_(pa.float32(), dim), nullable=False)


def embeddings_schema(dim: int) -> pa.Schema:
    """Schema of `embeddings/`: one fixed-size float32 vector, an anomaly score and whether the
    document had any feature (see HAS_FEATURES), per doc. Runs written before `has_features`
    existed lack that column: read it as True."""
    return pa.schema(
        [
            pa.field(DOC_ID, pa.string(), nullable=False),
            embedding_field(dim),
            pa.field(ANOMALY, pa.float32(), nullable=False),
            pa.field(HAS_FEATURES, pa.bool_(), nullable=False),
        ]
    )


ASSIGNMENTS_SCHEMA = pa.schema(
    [
        pa.field(DOC_ID, pa.string(), nullable=False),
        pa.field(CLUSTER_ID, pa.int32(), nullable=False),
        pa.field(DISTANCE, pa.float32(), nullable=False),
        pa.field(CONFIDENCE, pa.float32(), nullable=False),
        pa.field(RUN_ID, pa.string(), nullable=False),
        pa.field(STATUS, pa.string(), nullable=False),  # one of STATUSES
    ]
)

NEIGHBOURS_SCHEMA = pa.schema(
    [
        pa.field(DOC_ID, pa.string(), nullable=False),
        pa.field("neighbour_id", pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),  # 1 = the most similar other document
        pa.field("similarity", pa.float32(), nullable=False),  # cosine similarity
    ]
)
