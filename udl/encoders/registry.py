"""The encoders by kind: a fresh or warm-started encoder for a config, and any saved encoder
from its checkpoint folder. A new encoder implements `udl.encoders.base.Encoder` and registers
in `ENCODERS`."""

from __future__ import annotations

import json
from pathlib import Path

from udl.config import EncoderConfig, PreprocessConfig
from udl.datasets import ENCODER_CONFIG_FILE, read_kept_features
from udl.encoders.attention import AttentionEncoder
from udl.encoders.autoencoder import AutoencoderEncoder
from udl.encoders.base import Encoder
from udl.encoders.pretrained import PretrainedEncoder
from udl.encoders.twoview import TwoViewEncoder
from udl.errors import ConfigError

__all__ = ["ENCODERS", "load_encoder", "make_encoder"]

# Every encoder by its `kind` (the `EncoderConfig.kind` and checkpoint value).
ENCODERS: dict[str, type[Encoder]] = {
    encoder.kind: encoder
    for encoder in (TwoViewEncoder, AutoencoderEncoder, AttentionEncoder, PretrainedEncoder)
}


def make_encoder(
    config: EncoderConfig, preprocess: PreprocessConfig, models_dir: Path, seed: int
) -> Encoder:
    """An encoder of the configured kind, ready for `fit`.

    Fresh (untrained) unless `config.warm_start` names an earlier checkpoint, whose weights
    and feature vocabulary are kept; training then continues with `config`'s settings.

    Args:
        config: encoder kind, sizes and training settings.
        preprocess: the tokenisation and hashing that produced the features.
        models_dir: holds `tfidf.parquet` (the features kept by pruning).
        seed: seeds initialisation, noise and batch order.

    Raises:
        ConfigError: unknown checkpoint, incompatible warm start, missing optional model.
    """
    if config.warm_start is not None:
        previous = load_encoder(Path(config.warm_start), config.device)
        if previous.kind == PretrainedEncoder.kind:
            raise ConfigError(
                f"encoder.warm_start={config.warm_start!r} holds a 'pretrained' encoder, which "
                "has no trained weights; name a trained encoder's checkpoint"
            )
        if previous.kind != config.kind:
            raise ConfigError(
                f"encoder.warm_start={config.warm_start!r} holds a {previous.kind!r} encoder but "
                f"encoder.kind is {config.kind!r}; set encoder.kind to {previous.kind!r} or "
                "encoder.warm_start to empty to train from scratch"
            )
        return previous.continue_with(config, preprocess, seed)
    return ENCODERS[config.kind].create(config, preprocess, read_kept_features(models_dir), seed)


def load_encoder(folder: Path, device: str | None = None) -> Encoder:
    """Load a saved encoder of any kind from its checkpoint folder.

    Args:
        folder: a checkpoint written by `Encoder.save` (`config.json`, `weights.pt`).
        device: overrides the saved device setting.

    Raises:
        ConfigError: `folder` holds no checkpoint, or one of a kind this udl does not know.
    """
    config_file = folder / ENCODER_CONFIG_FILE
    if not config_file.is_file():
        raise ConfigError(
            f"{folder} holds no encoder checkpoint ({ENCODER_CONFIG_FILE} missing); pass a run's "
            "models/encoder folder"
        )
    kind = json.loads(config_file.read_text()).get("kind")
    if kind not in ENCODERS:
        raise ConfigError(
            f"{config_file} names the encoder kind {kind!r}, which this udl does not know "
            f"(known: {', '.join(sorted(ENCODERS))}); train from scratch"
        )
    return ENCODERS[kind].load(folder, device)
