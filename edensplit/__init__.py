"""edensplit: EDEN video frame interpolation split between a cloud encoder and an edge sampler/decoder."""

from edensplit.errors import CheckpointError, ConfigError, EdenError, InputError
from edensplit.model import (
    EdenConfig,
    FrameEncoding,
    LocalPipeline,
    Sampler,
    encode_frames,
    frame_difference,
    interpolate,
    load_config,
    load_model,
    noise_seed,
)
from edensplit.version import __version__

__all__ = [
    "CheckpointError", "ConfigError", "EdenConfig", "EdenError", "FrameEncoding", "InputError",
    "LocalPipeline", "Sampler", "encode_frames", "frame_difference", "interpolate", "load_config",
    "load_model", "noise_seed", "__version__",
]
