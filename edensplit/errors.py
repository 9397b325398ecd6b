"""The exceptions edensplit raises for problems a user can fix; each message names the problem."""


class EdenError(Exception):
    """Base class: a user-facing error whose message is shown as is, without a traceback."""


class ConfigError(EdenError):
    """The config file or a model argument is missing or invalid."""


class CheckpointError(EdenError):
    """The checkpoint is missing, unreadable, or does not match the config."""


class InputError(EdenError):
    """Frames or tensors handed to a stage do not fit (size, dtype, shape)."""
