"""PipelineConfig: defaults, validation messages, YAML loading, overrides, the Prefect form."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from udl.config import PipelineConfig, config_hash, load_config, parse_config
from udl.errors import ConfigError


def test_defaults_run_the_bundled_sample() -> None:
    config = PipelineConfig()
    assert config.input.path == "data/sample/wordnet_sample.parquet"
    assert config.encoder.kind == "two_view"
    assert config.cluster.algorithm == "kmeans"
    assert config.cluster.k == 10


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"cluster.k": 1}, "cluster.k"),
        ({"cluster.k": "many"}, "cluster.k"),
        ({"cluster.eps": -0.5}, "cluster.eps"),
        ({"cluster.k_candidates": [1, 5]}, "cluster.k_candidates"),
        ({"encoder.kind": "lstm"}, "encoder.kind"),
        ({"encoder.noise": 1.0}, "encoder.noise"),
        ({"preprocess.max_df": 0}, "preprocess.max_df"),
        ({"runtime.run_id": "../escape"}, "runtime.run_id"),
        ({"cluster.colour": "red"}, "cluster.colour"),
    ],
)
def test_invalid_values_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(field)):
        PipelineConfig().with_overrides(overrides)


def test_output_inside_input_is_refused(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    with pytest.raises(ConfigError, match=r"inside input\.path") as raised:
        parse_config(
            {"input": {"path": str(corpus)}, "runtime": {"output_dir": str(corpus / "out")}}
        )
    # A check across sections names the problem, not the whole config it was given.
    assert "Got {" not in str(raised.value) and "n_features" not in str(raised.value)


def test_long_invalid_values_are_shortened() -> None:
    with pytest.raises(ConfigError, match=r"Got 'x{50}x*… instead\.$") as raised:
        PipelineConfig().with_overrides({"encoder.kind": "x" * 500})
    assert len(str(raised.value)) < 400


def test_empty_strings_mean_unset() -> None:
    config = PipelineConfig().with_overrides({"input.id_column": "", "runtime.run_id": ""})
    assert config.input.id_column is None
    assert config.runtime.run_id is None


def test_yaml_fills_missing_keys_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("cluster:\n  k: auto\nencoder:\n  dim: 32\n", encoding="utf-8")
    config = load_config(path)
    assert config.cluster.k == "auto"
    assert config.encoder.dim == 32
    assert config.preprocess == PipelineConfig().preprocess


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cluster: [unclosed", "not valid YAML"),
        ("- a\n- b\n", "must hold a mapping"),
        ("cluster:\n  k: 0\n", "cluster.k"),
    ],
)
def test_bad_yaml_names_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.yaml")


def test_config_round_trips_through_json() -> None:
    config = PipelineConfig().with_overrides({"cluster.k": "auto", "runtime.seed": 7})
    assert parse_config(config.model_dump(mode="json")) == config


def test_config_hash_tracks_content() -> None:
    base = PipelineConfig()
    assert config_hash(base) == config_hash(PipelineConfig())
    assert config_hash(base) != config_hash(base.with_overrides({"runtime.seed": 1}))


def test_prefect_form_schema_has_defaults_and_descriptions() -> None:
    from prefect.utilities.callables import parameter_schema

    from flows.pipeline import clustering_pipeline

    schema = parameter_schema(clustering_pipeline).model_dump()
    definitions = schema["definitions"]
    cluster = definitions["ClusterConfig"]["properties"]
    assert cluster["algorithm"]["enum"] == ["kmeans", "dbscan"]
    assert cluster["niter"]["minimum"] == 1
    assert "description" in cluster["k"]
    assert schema["properties"]["config"]["default"]["input"]["path"] == (
        "data/sample/wordnet_sample.parquet"
    )


def test_inherited_sections_are_validated_with_the_rest_22(tmp_path: Path) -> None:
    # recluster/rereport take sections over from the source run's config; the combination
    # must pass the same checks as a config file (model_copy(update=...) skipped them).
    source = PipelineConfig().with_overrides({"input.path": str(tmp_path / "corpus")})
    config = PipelineConfig().with_overrides(
        {"runtime.output_dir": str(tmp_path / "corpus" / "out")}
    )
    with pytest.raises(ConfigError, match=r"lies inside input\.path"):
        config.inherit(source, ("input",))
    inherited = config.with_overrides({"runtime.output_dir": str(tmp_path / "out")}).inherit(
        source, ("input", "encoder")
    )
    assert inherited.input == source.input
    assert inherited.runtime.output_dir == str(tmp_path / "out")


def test_the_embed_step_sees_k_only_through_dec() -> None:
    """k reaches the embed step's config (and so its key) only as DEC's cluster count: without
    DEC, another k reuses the embeddings."""
    base = PipelineConfig()
    assert base.with_overrides({"cluster.k": 50}).run_encoder == base.run_encoder
    dec = base.with_overrides({"encoder.dec.method": "dec", "cluster.k": 50})
    assert dec.run_encoder.dec.n_clusters == 50
    assert dec.with_overrides({"cluster.k": 8}).run_encoder.dec.n_clusters == 8
