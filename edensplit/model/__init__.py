"""The model layer: EDEN's network, its config and checkpoint loading, the two stages, the seed rule.

The documented public API (README, *Python API*) is importable from here; code inside edensplit imports
from the defining modules (encoding.py, sampler.py, stages.py, pipeline.py, ...).
"""

from edensplit.model.checkpoint import load_model, read_state_dict
from edensplit.model.config import EdenConfig, ModelArgs, load_config
from edensplit.model.eden import ALL_STAGES, ENCODE, INTERPOLATE, Eden
from edensplit.model.encoding import FrameEncoding, Geometry
from edensplit.model.pipeline import LocalPipeline
from edensplit.model.sampler import REFERENCE_SAMPLER, Sampler
from edensplit.model.seeds import make_noise, noise_seed
from edensplit.model.stages import encode_frames, frame_difference, interpolate, to_uint8

__all__ = [
    "ALL_STAGES", "ENCODE", "INTERPOLATE", "REFERENCE_SAMPLER", "Eden", "EdenConfig", "FrameEncoding",
    "Geometry", "LocalPipeline", "ModelArgs", "Sampler", "encode_frames", "frame_difference",
    "interpolate", "load_config", "load_model", "make_noise", "noise_seed", "read_state_dict", "to_uint8",
]
