// ComfyUI frontend extension: mounts the FourD 4D viewer as a DOM widget on "FourD 4D Preview" nodes (and
// the deprecated "FourD 4D Preview (Gaussians)"), and loads the asset the node writes (ui.fourd_scene ->
// /view?...). The viewer imports its renderer (three.js + Spark, fourd/vendor/*.mjs) when the first widget is
// made; ComfyUI lists only *.js files as extensions, so the bundle is not loaded with the page.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { FourDViewer } from "./fourd/viewer.js";

function assetUrl(entry) {
  const q = new URLSearchParams({ filename: entry.filename, subfolder: entry.subfolder || "", type: entry.type || "temp" });
  return api.apiURL(`/view?${q.toString()}`);
}

app.registerExtension({
  name: "ComfyUI-FourD.Preview4D",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!["FourDPreview4D", "FourDPreviewGaussians"].includes(nodeData.name)) return;

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      const container = document.createElement("div");
      container.style.cssText = "width:100%;height:100%;min-height:260px;";
      try {
        this.fourdViewer = new FourDViewer(container);
      } catch (e) {
        container.textContent = `FourD viewer unavailable: ${e.message}`;
      }
      this.addDOMWidget("fourd_viewer", "fourd_viewer", container, { serialize: false, hideOnZoom: false });
      this.setSize([Math.max(this.size[0], 440), Math.max(this.size[1], 480)]);
      return r;
    };

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const entry = message?.fourd_scene?.[0];
      if (entry && this.fourdViewer) {
        this.fourdViewer.loadUrl(assetUrl(entry)).catch((e) => console.error("[FourD] viewer:", e));
      }
    };

    const onRemoved = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function () {
      this.fourdViewer?.destroy();
      return onRemoved?.apply(this, arguments);
    };
  },
});
