"""Synthetic SENSORIUM scans with a known ground truth: ``generate(out, SynthConfig.demo())``.

Official file tree and naming, natural-looking stimuli, a retinotopic population of simple and complex
cells modulated by running, pupil dilation and eye position, optional history and state effects (adaptation,
slow drift, a latent arousal state; on in the demo preset), noisy sparse responses, withheld test responses in
competition scans, and the oracle (the best any model can score).
"""

from sensorium.data.synth.config import SynthConfig
from sensorium.data.synth.writer import SynthResult, generate

__all__ = ["SynthConfig", "SynthResult", "generate"]
