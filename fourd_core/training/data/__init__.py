"""Training data for the sync, fused and lora objectives: readers, the latent cache, datasets.

Readers (each a documented folder layout; ``len()``, ``names()``, ``read(i)``; InputError naming the
sample and the fix for anything else):

* :class:`PseudoGridSource` - pseudo-4D grids from ordinary videos (4Real-Video Sec. 3.3 (1)),
  :mod:`.pseudo_grid`;
* :class:`MultiViewSource` - multi-view video folders and the grids this pack writes with
  :func:`write_grid_sample` (Sec. 3.3 (2)), :mod:`.multiview`;
* :class:`FourDNeX10MSource` - the 4DNeX-10M annotations (MonST3R, dynamic_3, static, captions),
  :mod:`.fourdnex10m`; :class:`RGBDSource` / :class:`SceneSource` - plain RGB-D video and
  ``scene.safetensors``, :mod:`.rgbd`; the XYZ recipe in :mod:`.pointmaps`.

:func:`prepare` (:mod:`.cache`) turns a reader into a latent cache; :class:`GridLatentDataset` /
:class:`FourDNeXLatentDataset` (:mod:`.datasets`) read it for the trainer.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ...errors import InputError
from .cache import CacheConfig, CacheEncoders, PrepareReport, prepare
from .clips import FOURDNEX, GRID, FourDNeXDataConfig, GridClip, GridDataConfig, RGBXYZClip, SampleSource
from .datasets import (FourDNeXLatentDataset, FourDNeXLatentSample, GridLatentDataset, GridLatentSample,
                       collate_latent_samples, open_latent_dataset)
from .fourdnex10m import FourDNeX10MSource
from .multiview import MultiViewSource, write_grid_sample
from .pseudo_grid import PseudoGridConfig, PseudoGridSource, make_pseudo_grid
from .rgbd import RGBDSource, SceneSource

#: ``--layout`` names of :func:`open_source` -> (reader, the objective family it feeds)
LAYOUTS = {"videos": GRID, "multiview": GRID, "4dnex10m": FOURDNEX, "rgbd": FOURDNEX, "scenes": FOURDNEX}


def open_source(layout: str, path: str | Path, *, grid: GridDataConfig | None = None,
                transforms: PseudoGridConfig | None = None, fourdnex: FourDNeXDataConfig | None = None,
                unprojection: str | None = None, default_caption: str | None = None) -> SampleSource:
    """The reader of one layout (a CLI's ``--layout``):

    * ``"videos"`` -> :class:`PseudoGridSource` (``grid``, ``transforms``);
    * ``"multiview"`` -> :class:`MultiViewSource` (``grid``);
    * ``"4dnex10m"`` -> :class:`FourDNeX10MSource` (``fourdnex``, ``default_caption``;
      ``unprojection`` overrides ``fourdnex.unprojection``, default ``"official"``);
    * ``"rgbd"`` -> :class:`RGBDSource` (``fourdnex``, ``unprojection``: default ``"full"``);
    * ``"scenes"`` -> :class:`SceneSource` (``fourdnex``).

    Raises:
        InputError: an unknown layout, or the reader's own errors (missing folder, empty dataset,
            bad sizes) - before any model loads.
    """
    if layout == "videos":
        return PseudoGridSource(path, grid, transforms)
    if layout == "multiview":
        return MultiViewSource(path, grid)
    if layout == "4dnex10m":
        if unprojection is not None:
            fourdnex = dataclasses.replace(fourdnex or FourDNeXDataConfig(), unprojection=unprojection)
        return FourDNeX10MSource(path, fourdnex, default_caption)
    if layout == "rgbd":
        return RGBDSource(path, fourdnex, unprojection or "full")
    if layout == "scenes":
        return SceneSource(path, fourdnex)
    raise InputError(f"Unknown data layout {layout!r}; use one of {', '.join(LAYOUTS)}.")


__all__ = [
    "CacheConfig", "CacheEncoders", "FOURDNEX", "FourDNeX10MSource", "FourDNeXDataConfig", "FourDNeXLatentDataset",
    "FourDNeXLatentSample", "GRID", "GridClip", "GridDataConfig", "GridLatentDataset", "GridLatentSample", "LAYOUTS",
    "MultiViewSource", "PrepareReport", "PseudoGridConfig", "PseudoGridSource", "RGBDSource", "RGBXYZClip",
    "SampleSource", "SceneSource", "collate_latent_samples", "make_pseudo_grid", "open_latent_dataset", "open_source",
    "prepare", "write_grid_sample",
]
