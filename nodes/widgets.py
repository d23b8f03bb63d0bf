"""Node input specs built from the pack's registries and configs, so a combo's choices, its default and its
tooltip are written once (in ``fourd_core``) and every node that offers the setting shows the same thing."""

from __future__ import annotations

from ..fourd_core.kernels.fused import FUSED_BACKENDS, fused_backend_names
from ..fourd_core.kernels.streams import GRID_MODES


def grid_mode_widget(default: str = "soft_avg") -> tuple:
    """The ``mode`` combo of the grid nodes (diffusers and native): every registered grid mode."""
    return (list(GRID_MODES.names()), {"default": default, "tooltip": GRID_MODES.describe()})


def fused_backend_widget() -> tuple:
    """The ``fused_backend`` combo: ``auto`` plus every registered fused-attention backend."""
    return (list(fused_backend_names()), {"default": "auto", "tooltip": "Fused mode only. auto: flex on CUDA, else "
                                          "gather; " + FUSED_BACKENDS.describe()})
