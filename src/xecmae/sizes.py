"""Named model sizes, in one place.

``base`` is the specification's default (about 45 M parameters with the MAE decoders);
``tiny`` trains in minutes on a laptop CPU and is what tests and the demo build.
"""

MODEL_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"encoder_dim": 128, "decoder_dim": 32, "dim_feedforward": 256, "num_fusion_layers": 1, "num_heads": 4},
    "small": {"encoder_dim": 256, "decoder_dim": 64, "dim_feedforward": 1024, "num_fusion_layers": 2, "num_heads": 8},
    "base": {"encoder_dim": 1024, "decoder_dim": 128, "dim_feedforward": 4096, "num_fusion_layers": 2, "num_heads": 8},
}


def size_conflicts(size: str, yaml_model: dict, where: str) -> list[str]:
    """Dimensions a YAML file sets that contradict a named size given elsewhere (on the command line).

    Within one source an explicit dimension overrides the size; across sources that would build
    a hybrid of two sizes nobody asked for, so the caller refuses it.
    """
    named = MODEL_SIZES.get(size, {})
    return [f"model.size {size!r} has {key} {value}, {where} sets model.{key}: {yaml_model[key]}"
            for key, value in named.items() if key in yaml_model and yaml_model[key] != value]
