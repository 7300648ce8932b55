"""Configuration of the corpus (where it is, which columns mean what) and of its TF-IDF."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from udl.config._base import Frozen, IntOrNone, StrOrNone

__all__ = ["SAMPLE_CORPUS", "InputConfig", "PreprocessConfig"]

SAMPLE_CORPUS = "data/sample/wordnet_sample.parquet"


class InputConfig(Frozen):
    """Where the corpus is and which columns mean what."""

    path: str = Field(
        SAMPLE_CORPUS,
        description="File, folder, glob or fsspec URL of the corpus (CSV/TSV, JSON Lines, "
        "Parquet, or a folder of .txt files).",
    )
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet", "text"] = Field(
        "auto", description="Input format; 'auto' picks it from the file extension."
    )
    text_column: str = Field("text", description="Column holding the document text.")
    id_column: StrOrNone = Field(
        None,
        description="Column holding a unique document id; empty derives a stable id "
        "from the source file, row and text.",
    )
    label_column: StrOrNone = Field(
        None, description="Optional column with known classes, used only for evaluation."
    )
    metadata_columns: list[str] = Field(
        default_factory=list, description="Extra columns carried through to the assignments."
    )
    embedding_column: StrOrNone = Field(
        None,
        description="Column of precomputed vectors (lists of numbers; Parquet or JSON Lines): "
        "the documents are clustered on these and no encoder is trained. Rows whose vector is "
        "null, has a null or non-finite value, or has another length are rejected.",
    )
    embedding_dim: IntOrNone = Field(
        None,
        ge=1,
        description="Length every vector of embedding_column must have; empty takes the length "
        "of the first valid vector of the first source file (in sorted file order).",
    )
    max_chars: int = Field(
        100_000, ge=100, description="Longer documents are truncated to this many characters."
    )
    duplicate_ids: Literal["reject", "error"] = Field(
        "reject",
        description="A repeated id: 'reject' keeps the first row and rejects the others; "
        "'error' stops the run at the first repeat.",
    )
    partition_rows: int = Field(
        50_000, ge=100, description="Rows per Parquet partition of the ingested corpus."
    )

    @model_validator(mode="after")
    def _embedding_column_is_its_own(self) -> InputConfig:
        if self.embedding_column is None:
            if self.embedding_dim is not None:
                raise ValueError("embedding_dim needs embedding_column (the column it applies to)")
            return self
        others = [self.text_column, self.id_column, self.label_column, *self.metadata_columns]
        if self.embedding_column in others:
            raise ValueError(
                f"embedding_column {self.embedding_column!r} is also used as the text, id, label "
                "or a metadata column; a vector column can only be the embedding column"
            )
        return self


class PreprocessConfig(Frozen):
    """Normalisation, tokenisation and hashed TF-IDF."""

    n_features: int = Field(
        2**16, ge=2**8, le=2**24, description="Number of hashed TF-IDF features."
    )
    lowercase: bool = Field(True, description="Lower-case text before tokenising.")
    strip_accents: bool = Field(False, description="Fold accented letters to ASCII.")
    stop_words: Literal["english", "none"] = Field("english", description="Stop-word list.")
    ngram_max: int = Field(1, ge=1, le=3, description="Longest word n-gram (1 = unigrams).")
    sublinear_tf: bool = Field(True, description="Use 1 + log(tf) instead of raw counts.")
    min_df: int = Field(2, ge=1, description="Drop features seen in fewer documents.")
    max_df: float = Field(
        0.5, gt=0.0, le=1.0, description="Drop features seen in more than this share of documents."
    )
    keyword_vocabulary: int = Field(
        50_000, ge=1000, description="Token strings kept per partition to name hashed features."
    )
