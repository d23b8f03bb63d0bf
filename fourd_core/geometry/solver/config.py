"""The options of :func:`~.fit.fit_cameras`, written once: each field carries its default, its rule and its help
(:func:`fourd_core.settings.setting`); the solver, :class:`fourd_core.api.GeometryConfig`, the CLI and FourD
Recover Cameras all read them from here."""

from __future__ import annotations

import dataclasses

from ...errors import InputError
from ...settings import setting, validate

ROBUST_LOSSES = ("auto", "huber", "cauchy", "tukey", "none")


@dataclasses.dataclass
class SolverConfig:
    """Options of the camera/depth recovery (see :func:`~.fit.fit_cameras` for what each does)."""

    shared_intrinsics: bool | None = setting(
        None, help="one K for the clip, one per frame (zoom), or chosen from the data by a statistical test",
        labels={"auto": None, "shared": True, "per-frame": False}, flag="--intrinsics", allow_none=True)
    square_pixels: bool = setting(True, help="square pixels, fx = fy (off: fit fx and fy separately)",
                                  flag="--non-square-pixels")
    centered_principal_point: bool | None = setting(
        None, help="cx, cy at the image centre, fitted, or fitted only when the maps determine it",
        labels={"auto": None, "centered": True, "free": False}, flag="--principal-point", allow_none=True)
    robust: str = setting("auto", help="down-weights outlier points: auto = Huber, then Tukey when the maps hold gross "
                          "outliers (flying pixels, decoding errors)", choices=ROBUST_LOSSES)
    huber_delta: float | None = setting(None, help="robust threshold in world units (default: from the noise scale)",
                                        low=1e-12, allow_none=True)
    temporal_smoothness: float = setting(0.0, help="penalise jerky camera trajectories (0 = independent frames)",
                                         low=0.0, node_high=100.0, step=0.1, flag="--smoothness")
    iterations: int = setting(2, help="IRLS rounds at the fine level", low=1, integer=True)
    outlier_threshold: float | None = setting(5.0, help="residuals above this many noise scales get weight 0 "
                                              "(None: the pure robust function)", low=0.0, allow_none=True)
    noise_bias_correction: bool = setting(True, help="accepted for compatibility; the point-to-ray residual needs none")
    robust_init: bool = setting(True, help="robust initial hypotheses (least median of squares)")
    sample_pixels: int = setting(1500, help="pixels per frame of the initialisation grid", low=16, integer=True)
    refine_pixels: int = setting(6000, help="pixels per frame of the fine level", low=16, integer=True)
    seed: int = setting(0, help="seed of the hypothesis sampling", low=0, integer=True)
    chunk_pixels: int = setting(400_000, help="pixels processed at once in the output pass (bounds memory)", low=1,
                                integer=True)

    @classmethod
    def of(cls, config: "SolverConfig | None" = None, **options) -> "SolverConfig":
        """``config`` (any SolverConfig, e.g. a GeometryConfig) as a checked SolverConfig with ``options`` replaced.

        Raises:
            InputError: an unknown option or a value that breaks its rule.
        """
        base = {f.name: getattr(config, f.name) for f in dataclasses.fields(cls)} if config is not None else {}
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise InputError(f"Unknown camera-recovery option(s) {unknown}: the options are "
                             f"{', '.join(f.name for f in dataclasses.fields(cls))}.")
        cfg = cls(**{**base, **options})
        validate(cfg)
        return cfg
