"""One home per extension point: a dummy export format, grid mode, rasteriser and fused-attention backend,
each registered with one line, show up in the CLI and in the ComfyUI nodes' inputs, and the export format
is written by an export (the pack is imported as ComfyUI does, with its own copy of ``fourd_core``)."""

from __future__ import annotations

import sys

import pytest
import torch

from fourd_core import cli
from test_nodes import import_pack


@pytest.fixture()
def pack():
    return import_pack("ComfyUI_FourD_registries")


def _mod(pack, name):
    return sys.modules[f"{pack.__name__}.fourd_core.{name}"]


def _options(parser, *path):
    for name in path:
        parser = next(a for a in parser._actions if a.dest == "command").choices[name]
    return {opt: a for a in parser._actions for opt in a.option_strings}


def test_a_new_export_format_is_one_registration(pack, tmp_path):
    import fourd_core.io.formats as ours

    for formats in (ours, _mod(pack, "io.formats")):
        @formats.EXPORT_FORMATS.register("notes", help="notes.txt: a dummy format for this test")
        class Notes(formats.ExportFormat):
            def write(self, ctx):
                ctx.add("notes", "notes.txt").write_text(f"{ctx.scene.num_frames} frames")
    try:
        opts = _options(cli.build_parser(), "generate")
        assert "--no-notes" in opts and "notes.txt" in opts["--no-notes"].help
        inputs = pack.NODE_CLASS_MAPPINGS["FourDExport"].INPUT_TYPES()
        assert inputs["optional"]["notes"][0] == "BOOLEAN" and "dummy" in inputs["optional"]["notes"][1]["tooltip"]
        from fourd_core.io.export import ExportOptions, export_scene
        from fourd_core.scene import Scene4D

        scene = Scene4D(rgb=torch.rand(2, 8, 8, 3), xyz=torch.rand(2, 8, 8, 3))
        written = export_scene(scene, tmp_path, ExportOptions.with_formats(videos=False, images=False, cameras=False,
                                                                          depth=False, ply=False, glb=False))
        assert (tmp_path / "notes.txt").read_text() == "2 frames" and written["notes"] == [str(tmp_path / "notes.txt")]
    finally:
        ours.EXPORT_FORMATS.remove("notes")


def test_a_new_grid_mode_rasteriser_and_fused_backend_are_one_registration_each(pack):
    import fourd_core.kernels.fused as fused
    import fourd_core.kernels.streams as streams
    import fourd_core.splats.rasterize as raster

    for k_streams, k_fused, k_raster in ((streams, fused, raster),
                                         (_mod(pack, "kernels.streams"), _mod(pack, "kernels.fused"),
                                          _mod(pack, "splats.rasterize"))):
        @k_streams.GRID_MODES.register("halfway", help="a dummy two-stream mode for this test")
        class Halfway(k_streams.TwoStreamMode):
            def merge(self, index, num_blocks, y_v, y_t, layer=None, feats=None):
                return (y_v + y_t) / 2, None

        k_fused.FUSED_BACKENDS.register("nothing", help="a dummy fused backend for this test")(k_fused.GatherBackend)
        k_raster.RASTERIZERS.add("dummy", k_raster.Rasterizer(k_raster.rasterize_torch, lambda d: True),
                                 help="a dummy rasteriser for this test")
    try:
        assert "dummy" in _options(cli.build_parser(), "gaussians")["--backend"].choices
        fit = pack.NODE_CLASS_MAPPINGS["FourDFit4DGaussians"].INPUT_TYPES()["optional"]["backend"]
        assert "dummy" in fit[0]
        for name in ("FourDGridSampler", "FourDGridModelNative"):
            inputs = pack.NODE_CLASS_MAPPINGS[name].INPUT_TYPES()
            every = {**inputs["required"], **inputs.get("optional", {})}
            assert "halfway" in every["mode"][0] and "dummy two-stream mode" in every["mode"][1]["tooltip"]
            assert "nothing" in every["fused_backend"][0]
        assert streams.grid_mode("halfway").merge(0, 1, torch.ones(1), torch.zeros(1))[0].item() == 0.5
    finally:
        for k_streams, k_fused, k_raster in ((streams, fused, raster),
                                             (_mod(pack, "kernels.streams"), _mod(pack, "kernels.fused"),
                                              _mod(pack, "splats.rasterize"))):
            k_streams.GRID_MODES.remove("halfway")
            k_fused.FUSED_BACKENDS.remove("nothing")
            k_raster.RASTERIZERS.remove("dummy")
