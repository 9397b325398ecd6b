"""edensplit: EDEN video frame interpolation split between a cloud encoder and an edge sampler/decoder."""

from edensplit.errors import CheckpointError, ConfigError, EdenError, InputError
from edensplit.model.checkpoint import load_model
from edensplit.model.config import EdenConfig, load_config
from edensplit.model.encoding import FrameEncoding
from edensplit.model.pipeline import LocalPipeline
from edensplit.model.sampler import Sampler
from edensplit.model.seeds import noise_seed
from edensplit.model.stages import encode_frames, frame_difference, interpolate
from edensplit.version import __version__

__all__ = [
    "CheckpointError", "ConfigError", "EdenConfig", "EdenError", "FrameEncoding", "InputError",
    "LocalPipeline", "Sampler", "encode_frames", "frame_difference", "interpolate", "load_config",
    "load_model", "noise_seed", "__version__",
]
