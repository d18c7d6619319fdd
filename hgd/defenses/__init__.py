"""Defenses: the DUNET denoiser, input transforms, defense configs and the defended model."""


class MissingWeights(FileNotFoundError):
    """A defense names trained denoiser weights that do not exist: it must not run, be attacked, evaluated
    or packaged with an untrained denoiser (which would measure nothing). The one refusal: its message
    names the configuration and every missing file."""
