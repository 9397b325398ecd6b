"""The model layer: EDEN's network, its config and checkpoint loading, the two stages, the seed rule."""

from edensplit.model.checkpoint import load_model, read_state_dict
from edensplit.model.config import EdenConfig, ModelArgs, load_config
from edensplit.model.eden import ALL_STAGES, ENCODE, INTERPOLATE, Eden
from edensplit.model.seeds import make_noise, noise_seed
from edensplit.model.stages import (
    REFERENCE_SAMPLER,
    FrameEncoding,
    Geometry,
    LocalPipeline,
    Sampler,
    encode_frames,
    frame_difference,
    interpolate,
    to_uint8,
)

__all__ = [
    "ALL_STAGES", "ENCODE", "INTERPOLATE", "REFERENCE_SAMPLER", "Eden", "EdenConfig", "FrameEncoding",
    "Geometry", "LocalPipeline", "ModelArgs", "Sampler", "encode_frames", "frame_difference",
    "interpolate", "load_config", "load_model", "make_noise", "noise_seed", "read_state_dict", "to_uint8",
]
