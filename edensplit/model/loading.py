"""Loading a process's model as its settings say: the stages' weights, the device and compute dtype, the
thread count, and optionally torch.compile. Servers, the CLI's --local runs and the benchmarks all load here."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch

from edensplit.errors import ConfigError
from edensplit.model.checkpoint import load_model
from edensplit.model.config import EdenConfig, load_config
from edensplit.model.eden import ENCODE, INTERPOLATE, Eden
from edensplit.model.hub import RELEASED
from edensplit.model.precision import torch_dtype
from edensplit.model.sources import TINY, TINY_NAME, tiny_installed
from edensplit.model.stand_in import StandIn
from edensplit.settings import ModelSettings

log = logging.getLogger("edensplit.server")

COMPILED = ("encode_tokens", "frame_context", "velocity", "decode")


def load_model_for(stages: Iterable[str], settings: ModelSettings) -> Eden:
    """Load only the weights `stages` need, as the settings say; random weights only if explicitly allowed. The
    start-up line names what runs (the URI and commit, or the tiny EDEN) and its digest."""
    stage = "+".join(sorted(stages))
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    config = load_config(settings.eden_config) if settings.eden_config is not None else None
    if settings.edensplit_stand_in_model:
        if settings.model_path is not None:
            raise ConfigError("EDENSPLIT_STAND_IN_MODEL=1 and MODEL_PATH are both set: the stand-in measures the "
                              "serving path and never serves a model; unset one")
        log.warning("%s stage: STAND-IN MODEL (EDENSPLIT_STAND_IN_MODEL=1): the full-size shapes, no network; its "
                    "frames are a checkerboard, not interpolations", stage)
        return StandIn(config or EdenConfig(), stages, settings.device,  # type: ignore[return-value]
                       torch_dtype(settings.eden_dtype))
    model = load_model(settings.model_path, config, stages=set(stages), device=settings.device,
                       dtype=torch_dtype(settings.eden_dtype), allow_random=settings.eden_random_weights,
                       seed=settings.eden_random_seed)
    if model.weights_source.startswith("random"):
        log.warning("%s stage: RANDOM WEIGHTS (%s): outputs show the pipeline, not EDEN's quality",
                    stage, model.weights_source)
    else:
        log.info("%s stage: loaded %s, digest %s, on %s", stage, model.weights_source, model.weights_digest,
                 settings.device)
    if settings.eden_compile:
        compile_model(model)
    return model


TRYING_OUT = (f"no MODEL_PATH: running the {TINY_NAME} (MODEL_PATH={TINY}; a try-out, not the released model: "
              f"MODEL_PATH={RELEASED} runs that)")


def for_trying_out(settings: ModelSettings, say: Callable[[str], None] | None = None) -> ModelSettings:
    """The settings where a person is trying things out (`edensplit demo`, `interpolate --local`, `bench --mode
    quality`): MODEL_PATH if set, else EDEN_RANDOM_WEIGHTS=1 with EDEN_CONFIG, else the tiny EDEN, said in one
    line to `say`. A server never calls this: started without MODEL_PATH it refuses (load_model says how)."""
    if settings.model_path is not None or settings.eden_random_weights:
        return settings
    if say is not None and tiny_installed():
        say(TRYING_OUT)
    return settings.model_copy(update={"model_path": TINY})


def compile_model(model: Eden) -> None:
    """torch.compile the model's hot functions in place (shapes dynamic: one compilation serves every frame
    size). The first call of each compiles, so the server's warm-up pays it before it reports ready.
    Compiled float32 may differ from eager by float rounding: the exact mode is eager."""
    names = [n for n in COMPILED if (ENCODE if n == "encode_tokens" else INTERPOLATE) in model.stages]
    for name in names:
        setattr(model, name, torch.compile(getattr(model, name), dynamic=True))
    log.info("compiling %s with torch.compile (first calls are slow)", ", ".join(names))
