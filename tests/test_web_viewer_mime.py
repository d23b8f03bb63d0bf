"""The viewer still starts when the server sends the renderer bundle (.mjs) with a non-JavaScript MIME type
(a module import refuses it; the viewer then imports the same file's text from a blob URL). Its own module
because Playwright's sync API cannot run two browsers at once (test_web_viewer.py keeps one open)."""

from __future__ import annotations

import pytest
from test_web_viewer import W, H, covered, pixel_scene
from web_viewer_page import canvas_pixels, skip_reason, viewer_page

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))


def test_bundle_served_as_octet_stream_still_loads():
    from fourd_core.io.viewer_asset import viewer_asset_bytes

    asset = viewer_asset_bytes(pixel_scene(), points_per_frame=W * H)
    with viewer_page(asset, options={"size": [W, H]}, viewport=(360, 200), mjs_type="application/octet-stream") as pg:
        kind = pg.evaluate("""fetch('/web/fourd/vendor/fourd-three-spark.mjs').then((r) => r.headers.get('content-type'))""")
        assert kind == "application/octet-stream"
        direct = pg.evaluate("""import('/web/fourd/vendor/fourd-three-spark.mjs?direct').then(() => 'loaded', (e) => e.name)""")
        assert direct == "TypeError"  # a plain module import refuses it, so the picture below came by the fallback
        assert covered(canvas_pixels(pg)).mean() > 0.9
        assert not pg.errors and not pg.external
