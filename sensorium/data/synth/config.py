"""SynthConfig: the size and the knobs of a synthetic SENSORIUM dataset (one frozen dataclass)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sensorium.errors import ConfigError

MIN_TRAIN_TRIALS = 20  # a scan needs some training data besides its test tiers
# The history and state knobs and their largest values: beyond these a neuron's gain swings by orders of
# magnitude (a log-gain std of 2 is a factor of 7 either way), which no recording shows.
HISTORY_LIMITS = {"adaptation": 5.0, "drift": 2.0, "arousal": 2.0}
# The demo's: a log-gain std of about 0.58 over trials; the live-test ceiling is 0.59 with the true gains and
# 0.46 without. Measured once: a per-neuron Poisson GLM of the gain on the last 3 trials' own and population
# mean responses, pupil and session time, on top of the true stimulus rate, gains about 0.055 single-trial
# correlation (0.42 -> 0.48) on the pre-training scan's test tier, the order of the SENSORIUM+ winner's gain.
DEMO_HISTORY = {"adaptation": 0.5, "drift": 0.4, "arousal": 0.4}


@dataclass(frozen=True)
class SynthConfig:
    """How many scans, neurons and trials to make, and how the ground truth behaves.

    The defaults are the size of one real SENSORIUM recording (about 8000 neurons, 6000 trials, 144x256
    images); the first ``n_competition`` scans are competition scans (``final_test`` tier, withheld test
    responses, hashed ``trial_idx``), the others pre-training scans.

    ``n_trials`` is the total per scan: ``n_test_images * test_repeats`` live-test trials (the same images in
    every scan), as many ``final_test`` trials in competition scans, and the rest unique train/validation
    images (``validation_fraction`` of them validation).

    History and state effects (``history.py``), each off at 0 and on in ``demo()``: ``adaptation`` (mean
    per-neuron strength of a divisive gain reduction after the neuron's own recent responses), ``drift``
    (std of the natural-log gain drifting slowly over the session) and ``arousal`` (std of the log gain a
    latent AR(1) arousal state adds; pupil dilation carries part of that state). With all three at 0 the
    generator writes exactly what it wrote before they existed.
    """

    seed: int = 0
    n_scans: int = 7
    n_competition: int = 2
    n_neurons: int = 8000
    n_trials: int = 6000
    image_height: int = 144  # stored on disk (official 144x256); models downscale to 36x64
    image_width: int = 256
    n_test_images: int = 100
    test_repeats: int = 10
    validation_fraction: float = 0.1
    noise_mix: float = 0.3  # largest weight of 1/f noise mixed into a photograph crop (0 = photos only)
    complex_fraction: float = 0.5  # share of complex (Gabor energy) cells; the rest are simple cells
    weak_fraction: float = 0.15  # share of weakly driven neurons
    signal_strength: float = 1.0  # scales the stimulus drive against the noise (oracle grows with it)
    adaptation: float = 0.0  # mean strength of adaptation to the neuron's own previous responses (0 = none)
    drift: float = 0.0  # std of the slow log-gain drift over the session (0 = none)
    arousal: float = 0.0  # std of the log gain of the latent arousal state carried between trials (0 = none)

    def __post_init__(self) -> None:
        for name in ("n_scans", "n_neurons", "n_trials", "image_height", "image_width", "n_test_images"):
            if getattr(self, name) < 1:
                raise ConfigError(f"synth.{name}={getattr(self, name)}: expected a value >= 1")
        if self.test_repeats < 2:
            raise ConfigError(f"synth.test_repeats={self.test_repeats}: expected >= 2 (repeats define the oracle)")
        if not 0 <= self.n_competition <= self.n_scans:
            raise ConfigError(f"synth.n_competition={self.n_competition}: expected 0..n_scans={self.n_scans}")
        if self.image_height < 8 or self.image_width < 8:
            raise ConfigError(f"synth image size {self.image_height}x{self.image_width}: expected at least 8x8")
        for name in ("validation_fraction", "noise_mix", "complex_fraction", "weak_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"synth.{name}={getattr(self, name)}: expected a fraction in [0, 1]")
        if self.signal_strength <= 0:
            raise ConfigError(f"synth.signal_strength={self.signal_strength}: expected a value > 0")
        for name, largest in HISTORY_LIMITS.items():
            value = getattr(self, name)
            if not 0.0 <= value <= largest:  # also refuses NaN
                raise ConfigError(f"synth.{name}={value}: expected a value in [0, {largest:g}] (0 = off)")
        if self.n_train_trials(competition=self.n_competition > 0) < MIN_TRAIN_TRIALS:
            test_tiers = 2 if self.n_competition else 1
            raise ConfigError(
                f"synth.n_trials={self.n_trials}: too few; {test_tiers} x {self.n_test_trials} test trials "
                f"({self.n_test_images} images x {self.test_repeats} repeats) must leave at least "
                f"{MIN_TRAIN_TRIALS} train trials"
            )

    @property
    def has_history(self) -> bool:
        """Whether any history or state effect is on (responses are then simulated trial by trial)."""
        return any(getattr(self, name) > 0 for name in HISTORY_LIMITS)

    def without_history(self) -> SynthConfig:
        """A copy with every history and state effect off."""
        return self.replace(**{name: 0.0 for name in HISTORY_LIMITS})

    @property
    def n_test_trials(self) -> int:
        """Trials of the live-test tier (and of ``final_test`` in competition scans)."""
        return self.n_test_images * self.test_repeats

    def n_unique_trials(self, competition: bool) -> int:
        """Train + validation trials (one unique image each) of a scan."""
        return self.n_trials - self.n_test_trials * (2 if competition else 1)

    def n_validation_trials(self, competition: bool) -> int:
        return int(round(self.n_unique_trials(competition) * self.validation_fraction))

    def n_train_trials(self, competition: bool) -> int:
        return self.n_unique_trials(competition) - self.n_validation_trials(competition)

    def replace(self, **changes: object) -> SynthConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def tiny(cls, seed: int = 0) -> SynthConfig:
        """Two scans (one competition, one pre-training), 40 neurons, 300 trials, 36x64: a few seconds."""
        return cls(
            seed=seed,
            n_scans=2,
            n_competition=1,
            n_neurons=40,
            n_trials=300,
            image_height=36,
            image_width=64,
            n_test_images=10,
            test_repeats=4,
        )

    @classmethod
    def demo(cls, seed: int = 0, history: bool = True) -> SynthConfig:
        """Two scans (one competition, one pre-training), 300 neurons, 2000 trials, 36x64: under a minute.

        20 test images x 10 repeats leave about 1450-1620 train trials per scan. History and state effects
        are on at moderate values (``history=False``: off, the data of the version before them).
        """
        cfg = cls(
            seed=seed,
            n_scans=2,
            n_competition=1,
            n_neurons=300,
            n_trials=2000,
            image_height=36,
            image_width=64,
            n_test_images=20,
            test_repeats=10,
        )
        return cfg.replace(**DEMO_HISTORY) if history else cfg
