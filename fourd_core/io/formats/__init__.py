"""The export formats: one module each, registered in :data:`EXPORT_FORMATS`, which drives
:func:`fourd_core.io.export.export_scene`, the ``--no-<format>`` flags of the CLI, FourD Export's toggles
and the export docs. Adding a format is one module plus one import line here::

    @EXPORT_FORMATS.register("my_format", help="what it writes")
    class MyFormat(ExportFormat):
        needs_cameras = True

        def write(self, ctx):                      # ctx: ExportContext
            ctx.say("my format", 0, 1)
            path = ctx.add("my_format", "my_file.bin")
            ...write into path (inside the private staging folder)...

Formats write in registration order into the export's staging folder; nothing reaches the output folder
unless every one of them succeeded (:func:`fourd_core.util.atomic.staged_output`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from ...registry import Registry


class ExportFormat:
    """An export format. Class attributes:

    * ``needs_cameras``: only written for scenes with cameras and depth (the geometry exports);
    * ``default``: on unless the options say otherwise (None: decided by :meth:`default_for`);
    * ``node``: how FourD Export offers its toggle (``"required"``: a widget among the node's first inputs,
      ``"optional"``: at the end, None: no toggle, always as the default says).
    """

    needs_cameras = False
    default: bool | None = True
    node: str | None = "optional"

    def default_for(self, options) -> bool:
        """The toggle when the options leave it open (only for ``default = None``)."""
        return True

    def size_lower_bound(self, ctx: "ExportContext") -> int:
        """Bytes this format writes at least (0 if compressed or not known in advance)."""
        return 0

    def write(self, ctx: "ExportContext") -> None:
        raise NotImplementedError


EXPORT_FORMATS: Registry[ExportFormat] = Registry("export format")


@dataclasses.dataclass
class ExportContext:
    """What one export's formats share: the scene, the options, the frame list, the staging folder and
    the record of written files (``{kind: [paths in the output folder]}``)."""

    scene: object
    options: object
    frames: list[int]
    staging: Path
    out: Path
    written: dict
    say: Callable[[str, int, int], None]
    cache: dict = dataclasses.field(default_factory=dict)

    def add(self, kind: str, rel: str) -> Path:
        """Record ``rel`` (relative to the output folder) under ``kind``; returns its path in the staging folder."""
        self.written.setdefault(kind, []).append(str(self.out / rel))
        return self.staging / rel

    def enabled(self, name: str) -> bool:
        return self.options.enabled(name)

    def shared(self, key, make):
        """``make()`` computed once per export and shared between formats (e.g. cleaned point clouds)."""
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]


from . import videos, scene_file, images, depth, cameras, pointclouds, gaussians  # noqa: E402,F401 - registration order
