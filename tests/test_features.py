"""Hashed TF-IDF with Dask: equals scikit-learn, and a LocalCluster equals one process (issue 3)."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path

import dask
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from distributed import Client
from sklearn.feature_extraction.text import (
    HashingVectorizer,
    TfidfTransformer,
    strip_accents_unicode,
)

from udl import corpus as corpus_module
from udl import schema as S
from udl.config import InputConfig, PreprocessConfig, RuntimeConfig
from udl.corpus import ingest
from udl.datasets import read_csr, read_idf, read_vocabulary
from udl.errors import InputDataError
from udl.features import TOKEN_STATS, _merge_stats, compute_features, transform_features
from udl.parallel import dask_client
from udl.storage import dataset_parts
from udl.tokens import hash_tokens, tokenize

DATA = Path(__file__).resolve().parents[1] / "data" / "sample" / "wordnet_sample.parquet"
FORTUNES = Path(__file__).resolve().parent / "data" / "fortunes_sample.parquet"


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """1,500 glosses and 1,500 fortunes (real text: punctuation, digits, accents, tabs)."""
    glosses = pq.read_table(DATA)["text"].to_pylist()
    return glosses[::2][:1500] + pq.read_table(FORTUNES)["text"].to_pylist()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, texts: list[str]) -> Path:
    """The texts ingested in 5 parts (4 x 700 rows, then 200)."""
    root = tmp_path_factory.mktemp("features")
    ids = [f"d{i}" for i in range(len(texts))]
    pq.write_table(pa.table({"doc_id": ids, "text": texts}), root / "in.parquet")
    config = InputConfig(path=str(root / "in.parquet"), id_column="doc_id", partition_rows=700)
    ingest(config, root / "corpus", root / "rejects")
    return root / "corpus"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Client]:
    """One two-worker LocalCluster for the module (starting one takes seconds)."""
    with dask_client(RuntimeConfig(dask_workers=2, dask_memory_limit="1GiB")) as client:
        yield client


def _features(corpus: Path, out: Path, config: PreprocessConfig) -> sp.csr_matrix:
    with dask.config.set(scheduler="synchronous"):
        compute_features(corpus, out / "features", out / "models", config)
    parts = dataset_parts(out / "features")
    return sp.vstack([read_csr(pq.read_table(p)) for p in parts]).tocsr()


def _files(folder: Path) -> dict[Path, bytes]:
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


MULTILINGUAL = [
    "Größe und Straße — naïve café",
    "Ελληνικά κείμενα, δοκιμή ένα",
    "東京タワー 2020年 の 夜景",
    "don’t “quote” ﬁnal ﬂag",
    "Ａｂｃ１２３ full-width x² ½ mañana",
    "über-cool_stuff ümlaut\tend",
    "Ünïcödé at start, ASCII at end",
]


def _sklearn_preprocessor(strip_accents: bool) -> Callable[[str], str]:
    """Our documented normalisation, given to scikit-learn so only tokenising is compared."""
    if strip_accents:
        return lambda text: strip_accents_unicode(text).lower()
    return lambda text: unicodedata.normalize("NFKC", text).lower()


@pytest.mark.parametrize(
    ("ngram_max", "strip_accents"), [(1, False), (2, False), (3, True)], ids=str
)
def test_tokens_equal_scikit_learn_analyzer_on_real_text_3(
    texts: list[str], ngram_max: int, strip_accents: bool
) -> None:
    config = PreprocessConfig(ngram_max=ngram_max, strip_accents=strip_accents)
    analyzer = HashingVectorizer(
        stop_words="english",
        ngram_range=(1, ngram_max),
        preprocessor=_sklearn_preprocessor(strip_accents),
    ).build_analyzer()
    sample = [*texts, *MULTILINGUAL]
    assert tokenize(sample, config) == [analyzer(t) for t in sample]


def test_unicode_normalisation_and_accent_folding_3() -> None:
    text = ["ＷＩＤＥ-screen ﬁsh Café naïve"]
    assert tokenize(text, PreprocessConfig()) == [["wide", "screen", "fish", "café", "naïve"]]
    folded = PreprocessConfig(strip_accents=True)
    assert tokenize(text, folded) == [["wide", "screen", "fish", "cafe", "naive"]]


def test_features_equal_scikit_learn_tfidf_3(
    corpus: Path, texts: list[str], tmp_path: Path
) -> None:
    config = PreprocessConfig(n_features=2**12, min_df=1, max_df=1.0, ngram_max=2)
    ours = _features(corpus, tmp_path, config)
    counts = HashingVectorizer(
        n_features=2**12, stop_words="english", ngram_range=(1, 2), alternate_sign=False, norm=None
    ).transform(texts)
    expected = TfidfTransformer(sublinear_tf=True).fit_transform(counts)
    assert ours.shape == expected.shape == (3000, 2**12)
    assert abs(ours - expected).max() < 1e-6


def test_min_df_max_df_prune_features_3(corpus: Path, tmp_path: Path) -> None:
    config = PreprocessConfig(n_features=2**12, min_df=3, max_df=0.05)
    matrix = _features(corpus, tmp_path, config)
    df = pq.read_table(tmp_path / "models" / "tfidf.parquet")["df"].to_numpy()
    assert df.min() >= 3 and df.max() <= 0.05 * 3000
    kept = np.flatnonzero(read_idf(tmp_path / "models"))
    assert set(np.unique(matrix.indices)) <= set(kept)
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    assert np.allclose(norms[norms > 0], 1.0, atol=1e-6)


def test_vocabulary_names_each_feature_by_a_token_that_hashes_to_it_3(
    corpus: Path, tmp_path: Path
) -> None:
    config = PreprocessConfig(keyword_vocabulary=1000)
    _features(corpus, tmp_path, config)
    vocabulary = read_vocabulary(tmp_path / "models")
    assert 0 < len(vocabulary) <= 1000
    features, tokens = zip(*vocabulary.items(), strict=True)
    assert hash_tokens(list(tokens), config.n_features).tolist() == list(features)
    assert {"people", "man", "person"} <= set(tokens)


def test_token_reduction_is_bounded_and_order_independent_3() -> None:
    def part(tokens: dict[str, int]) -> tuple:
        stats = pa.table({"token": list(tokens), "df": list(tokens.values())}, TOKEN_STATS)
        return np.zeros(4, np.int64), stats, 1

    a, b, c = part({"x": 5, "y": 2, "z": 2}), part({"y": 4, "w": 1}), part({"q": 6, "z": 1})
    left = _merge_stats(_merge_stats(a, b, 3), c, 3)
    right = _merge_stats(a, _merge_stats(c, b, 3), 3)
    assert left[1].to_pylist() == right[1].to_pylist()
    assert left[1].to_pylist() == [
        {"token": "q", "df": 6},
        {"token": "y", "df": 6},
        {"token": "x", "df": 5},
    ]


def test_local_cluster_equals_single_process_byte_for_byte_3(
    cluster: Client, texts: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ingest (3 files, one task each) + preprocess: same bytes on 2 workers as in-process."""
    for i in range(3):
        part = pa.table({"doc_id": [f"d{j}" for j in range(i * 1000, (i + 1) * 1000)]})
        part = part.append_column("text", pa.array(texts[i * 1000 : (i + 1) * 1000]))
        pq.write_table(part, tmp_path / f"in-{i}.parquet")
    monkeypatch.setattr(corpus_module, "CHUNK_BYTES", 1)
    source = InputConfig(
        path=str(tmp_path / "in-*.parquet"), id_column="doc_id", partition_rows=400
    )
    config = PreprocessConfig(n_features=2**14, ngram_max=2, min_df=2)
    results = {}
    for name, scheduler in (("s", "synchronous"), ("p", cluster.get)):
        out = tmp_path / name
        with dask.config.set(scheduler=scheduler):
            ingested = ingest(source, out / "corpus", out / "rejects")
            results[name] = (
                ingested,
                compute_features(out / "corpus", out / "f", out / "m", config),
            )
    assert results["s"] == results["p"]
    assert results["s"][1].n_parts == 9 and results["s"][1].n_docs == 3000  # 3 x (400+400+200)
    assert _files(tmp_path / "s") == _files(tmp_path / "p")
    assert len(cluster.scheduler_info()["workers"]) == 2


def test_new_documents_get_the_features_a_run_gives_them(corpus: Path, tmp_path: Path) -> None:
    """Transforming with a finished run's IDF refits nothing: the run's own corpus comes out
    byte for byte as the run wrote it, and the models are left as they were."""
    config = PreprocessConfig(min_df=2)
    _features(corpus, tmp_path / "run", config)
    models = tmp_path / "run" / "models"
    before = _files(models)
    with dask.config.set(scheduler="synchronous"):
        result = transform_features(corpus, tmp_path / "new", models, config)
    assert _files(tmp_path / "new") == _files(tmp_path / "run" / "features")
    assert _files(models) == before
    assert result.n_docs == 3000 and result.n_parts == 5
    assert result.n_features_kept == int(np.count_nonzero(read_idf(models)))


def test_feature_parts_mirror_corpus_parts_3(corpus: Path, tmp_path: Path) -> None:
    _features(corpus, tmp_path, PreprocessConfig())
    corpus_parts, feature_parts = dataset_parts(corpus), dataset_parts(tmp_path / "features")
    assert len(corpus_parts) == len(feature_parts) == 5
    for c, f in zip(corpus_parts, feature_parts, strict=True):
        assert pq.read_table(c)[S.DOC_ID].equals(pq.read_table(f)[S.DOC_ID])
    assert sorted(p.name for p in (tmp_path / "features").iterdir()) == [
        p.name for p in feature_parts
    ]


def test_words_never_span_documents_and_both_token_paths_agree_3() -> None:
    # ASCII documents take the byte-table path, the others the Unicode regex; output keeps
    # document order and no word joins the end of one document to the start of the next.
    texts = ["ab", "cd", "", None, "naïve ab", "x", "end_of it9 ", "  ", "zz"]
    config = PreprocessConfig(stop_words="none", ngram_max=2)
    assert tokenize(texts, config) == [
        ["ab"],
        ["cd"],
        [],
        [],
        ["naïve", "ab", "naïve ab"],
        [],
        ["end_of", "it9", "end_of it9"],
        [],
        ["zz"],
    ]


def test_input_errors_raised_on_workers_reach_the_caller_intact_3(
    cluster: Client, tmp_path: Path
) -> None:
    (tmp_path / "a.csv").write_bytes(b"id,text\na1,one\na1,again\n")
    config = InputConfig(path=str(tmp_path / "a.csv"), id_column="id", duplicate_ids="error")
    with (
        dask.config.set(scheduler=cluster.get),
        pytest.raises(InputDataError, match=r"a\.csv:2: duplicate doc_id 'a1'") as raised,
    ):
        ingest(config, tmp_path / "corpus", tmp_path / "rejects")
    assert (raised.value.row, raised.value.source) == (2, f"file://{tmp_path / 'a.csv'}")
