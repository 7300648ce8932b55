"""Similar documents: the FAISS index of a run's embeddings, `neighbours/`, `udl similar`.

Neighbours equal a brute-force NumPy cosine search (flat index, and an IVF index probing
every cell); a document's own nearest match is itself; documents without features are not
indexed; the pipeline with `--neighbours` writes them and the report shows them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from udl import schema as S
from udl.config import NeighboursConfig
from udl.datasets import embeddings_table
from udl.similar import SimilarIndex, build_index, write_neighbours
from udl.storage import write_part

K = 5


def _embeddings(folder: Path, n: int = 600, dim: int = 16, seed: int = 0) -> pd.DataFrame:
    """Two parts of clustered random vectors; every 50th document has no features."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, dim))
    x = (centres[rng.integers(0, 6, n)] + 0.4 * rng.normal(size=(n, dim))).astype(np.float32)
    ids = [f"d{i:04d}" for i in range(n)]
    featured = np.arange(n) % 50 != 7
    folder.mkdir(parents=True)
    for index, rows in enumerate((slice(0, n // 3), slice(n // 3, n))):
        table = embeddings_table(
            ids[rows], x[rows], np.zeros(len(x[rows]), np.float32), featured[rows]
        )
        write_part(table, folder, index)
    return pd.DataFrame({"doc_id": ids, "featured": featured, "x": list(x)})


def _brute_force(frame: pd.DataFrame, k: int) -> dict[str, list[str]]:
    kept = frame[frame["featured"]]
    x = np.stack(kept["x"].to_numpy())
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    ids = kept["doc_id"].to_numpy()
    return {ids[i]: ids[order[i]].tolist() for i in range(len(ids))}


@pytest.mark.parametrize(
    ("config", "kind"),
    [
        (NeighboursConfig(enabled=True, k=K), "flat"),
        # IVF probing every cell searches exhaustively: the same neighbours.
        (NeighboursConfig(enabled=True, k=K, flat_max=100, nprobe=1024), "ivf"),
    ],
)
def test_neighbours_equal_a_brute_force_search(
    tmp_path: Path, config: NeighboursConfig, kind: str
) -> None:
    frame = _embeddings(tmp_path / "embeddings")
    info = build_index(tmp_path / "embeddings", tmp_path / "models", config, seed=0)
    assert info.kind == kind and info.n_docs == int(frame["featured"].sum())
    rows = write_neighbours(tmp_path / "embeddings", tmp_path / "models", tmp_path / "nb", K)
    neighbours = pd.read_parquet(tmp_path / "nb")
    assert rows == len(neighbours) == info.n_docs * K
    assert (neighbours[S.DOC_ID] != neighbours["neighbour_id"]).all()
    assert not set(neighbours[S.DOC_ID]) & set(frame.loc[~frame["featured"], "doc_id"])
    found = {
        doc: group.sort_values("rank")["neighbour_id"].tolist()
        for doc, group in neighbours.groupby(S.DOC_ID)
    }
    assert found == _brute_force(frame, K)
    assert (
        neighbours.groupby(S.DOC_ID)["rank"].apply(list) == [list(range(1, K + 1))] * len(found)
    ).all()
    first = neighbours.sort_values([S.DOC_ID, "rank"]).groupby(S.DOC_ID)["similarity"]
    assert (first.diff().dropna() <= 1e-6).all()  # best first


def test_a_document_is_its_own_nearest_match(tmp_path: Path) -> None:
    frame = _embeddings(tmp_path / "embeddings")
    build_index(tmp_path / "embeddings", tmp_path / "models", NeighboursConfig(), seed=0)
    index = SimilarIndex(tmp_path / "models")
    kept = frame[frame["featured"]]
    rows, similarity = index.search(np.stack(kept["x"].to_numpy()), 1)
    assert index.ids[rows[:, 0]].tolist() == kept["doc_id"].tolist()
    np.testing.assert_allclose(similarity[:, 0], 1.0, atol=1e-5)


def test_udl_similar_finds_a_document_and_its_text(
    prefect_harness: None, small_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.cli import main

    output = tmp_path / "out"
    run = ["run", str(small_corpus), "-o", str(output), "--id-column", "doc_id", "--k", "4"]
    assert main([*run, "--run-id", "plain"]) == 0
    capsys.readouterr()
    assert main(["similar", "-o", str(output), "--doc-id", "x"]) == 2
    assert "udl run --neighbours" in capsys.readouterr().err

    assert main([*run, "--run-id", "indexed", "--neighbours"]) == 0
    corpus = pd.read_parquet(small_corpus)
    doc = corpus["doc_id"].iloc[10]
    capsys.readouterr()
    assert main(["similar", "-o", str(output), "--doc-id", doc, "--k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split()[0] == "1" and f"{doc}:" in lines[2] and len(lines) == 5
    assert main(["similar", "-o", str(output), "--text", corpus["text"].iloc[10]]) == 0
    out = capsys.readouterr().out.splitlines()
    assert f"{doc}:" in out[2] and float(out[2].split()[1]) > 0.999

    run_dir = output / "runs" / "indexed"
    neighbours = pd.read_parquet(run_dir / "neighbours")
    assert neighbours[S.DOC_ID].nunique() == len(pd.read_parquet(run_dir / "assignments"))
    html = (run_dir / "report" / "index.html").read_text()
    assert html.count('<details class="similar">') == 4 * 5  # each representative's neighbours
    assert 'href="#cluster-' in html
