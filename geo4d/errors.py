"""User-facing errors: each carries a one-line message naming the input and the problem."""


class Geo4DError(Exception):
    """Base class: the CLI prints ``error: <message>`` and exits non-zero."""


class InputError(Geo4DError):
    """A user input (path, video, store, option) is missing or unusable."""


class StoreError(Geo4DError):
    """A store exists but has another layout, or its contents are inconsistent."""


class PredictionError(Geo4DError):
    """Predictions are invalid (e.g. NaN/inf), naming the array and window."""


class SettingsChangedError(InputError):
    """A rerun asks for other settings than a finished stage was made with; nothing was changed.

    The message names the differing parameter and both values; ``--overwrite`` recomputes.
    """


class LeaseHeldError(Geo4DError):
    """Another writer holds the video's lease (its message says who and since when)."""


class LeaseLostError(Geo4DError):
    """This writer's lease on a video was taken over (its heartbeat stopped for too long): it stops writing."""
