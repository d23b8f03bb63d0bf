// ComfyUI-FourD 4D viewer: a scene's point cloud as three.js points and Gaussian splats drawn by Spark
// (true anisotropic, depth-sorted 3D Gaussians), three.js OrbitControls, a time slider with play/pause,
// point size, camera frusta. Reads the "FD4D" asset written by fourd_core/io/viewer_asset.py (version 2).
//
// The renderer (three.js + Spark, one offline ES module, web/fourd/vendor/fourd-three-spark.mjs, built by
// web_build) is imported on first use, not when ComfyUI loads this file as an extension.
//
// Conventions: the world is the asset's (OpenCV axes: x right, y down, z forward of the first camera);
// cameras are OpenCV K (pixels, pixel (row i, column j) centred at (u, v) = (j, i)) and cam_to_world.
// Controls: left drag = orbit, right drag / ctrl+drag = pan, wheel = zoom (three.js OrbitControls).

const BUNDLE_URL = new URL("./vendor/fourd-three-spark.mjs", import.meta.url).href;
let libPromise = null;

/** Import the renderer bundle once. Servers that send ".mjs" with a non-JavaScript MIME type make a module
 * import fail; the same file is then imported from its text (a blob URL), which needs no MIME type. */
export function loadRenderer() {
  if (!libPromise) {
    libPromise = import(BUNDLE_URL).catch(async (first) => {
      const r = await fetch(BUNDLE_URL);
      if (!r.ok) throw new Error(`could not load the renderer bundle ${BUNDLE_URL}: ${r.status} (${first.message})`);
      const blobUrl = URL.createObjectURL(new Blob([await r.text()], { type: "text/javascript" }));
      try {
        return await import(blobUrl);
      } finally {
        URL.revokeObjectURL(blobUrl);
      }
    });
    libPromise.catch(() => { libPromise = null; });
  }
  return libPromise;
}

/** Spark settings that make it draw what the 3DGS reference rasteriser (and the pack's
 * fourd_core/splats/rasterize.py) computes: alpha = o exp(-1/2 d^T (Sigma' + 0.3 I)^-1 d), fragments below
 * 1/255 skipped, composited back to front by camera depth with premultiplied alpha (the same sum as 3DGS's
 * front-to-back C = sum c_i a_i T_i + T bg). Colours are used as stored (no sRGB/linear conversion: the
 * canvas is sRGB and Spark converts only for a linear output). */
export const SPLAT_SETTINGS = {
  premultipliedAlpha: true,
  preBlurAmount: 0.3, // 3DGS's low-pass filter: + 0.3 px^2 on the projected covariance, opacity unchanged
  blurAmount: 0.0, // Spark's default adds 0.3 with an opacity compensation (Mip-Splatting style); 3DGS does not
  maxStdDev: Math.sqrt(2 * Math.log(255)) + 1e-3, // beyond this radius even opacity 1 is below 1/255
  minAlpha: 1 / 255, // 3DGS skips alpha < 1/255
  sortRadial: false, // sort by view depth z, as 3DGS does (Spark's default sorts by distance)
  maxPixelRadius: 2048,
  accumExtSplats: true, // keep float32 means and half-float attributes through Spark's accumulator
  enableLod: false,
  falloff: 1.0,
  focalAdjustment: 1.0,
};

export const BACKGROUND = [0.07, 0.07, 0.08]; // sRGB
const MAX_FOV = (120 * Math.PI) / 180; // wider cameras are not looked through, and their frusta are drawn clipped

// --- the asset ---------------------------------------------------------------------------------------
const POINT_FIELDS = { positions: [Float32Array, 3], colors: [Uint8Array, 3] };
const SPLAT_FIELDS = { positions: [Float32Array, 3], colors: [Float32Array, 3], scales: [Float32Array, 3],
  rotations: [Float32Array, 4], opacities: [Float32Array, 1] };

/** Decode an FD4D version-2 asset: { header, points, splats }, each layer null or a per-frame array of
 * { count, positions, colors[, scales, rotations, opacities] } typed-array views into `buffer`. */
export function parseAsset(buffer) {
  const bytes = new Uint8Array(buffer);
  const magic = String.fromCharCode(bytes[0], bytes[1], bytes[2], bytes[3]);
  if (magic !== "FD4D") throw new Error("not a FourD viewer asset");
  const dv = new DataView(buffer);
  const version = dv.getUint32(4, true);
  if (version !== 2) throw new Error(`FourD viewer asset version ${version}; this viewer reads version 2 (re-run the preview node)`);
  const headerLength = dv.getUint32(8, true);
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(12, 12 + headerLength)));
  const bodyStart = 12 + headerLength;
  const layer = (spec, fields) => spec ? spec.counts.map((n, i) => {
    const frame = { count: n };
    for (const [key, [Type, width]] of Object.entries(fields)) frame[key] = new Type(buffer, bodyStart + spec[key][i], width * n);
    return frame;
  }) : null;
  return { header, points: layer(header.points, POINT_FIELDS), splats: layer(header.splats, SPLAT_FIELDS) };
}

const srgbToLinear = (c) => (c <= 0.04045 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4));
const SRGB8_TO_LINEAR = new Float32Array(256).map((_, i) => srgbToLinear(i / 255));

export class FourDViewer {
  /**
   * @param {HTMLElement} container
   * @param {{pointSize?: number, size?: [number, number], background?: number[]}} options
   *   size: a fixed canvas size in device pixels (tests, screenshots); default: fill the container.
   */
  constructor(container, options = {}) {
    this.container = container;
    this.options = options;
    this.background = options.background || BACKGROUND;
    this.root = this._el("div", { className: "fourd-viewer" });
    this.root.style.cssText = "position:relative;display:flex;flex-direction:column;width:100%;height:100%;background:#111;color:#ddd;font:12px sans-serif;";
    this.canvas = this._el("canvas");
    this.canvas.style.cssText = "flex:1;width:100%;min-height:120px;display:block;touch-action:none;outline:none;";
    if (options.size) {
      this.canvas.style.cssText = `flex:none;width:${options.size[0]}px;height:${options.size[1]}px;display:block;touch-action:none;`;
    }
    this.status = this._el("div");
    this.status.style.cssText = "position:absolute;left:6px;top:6px;pointer-events:none;opacity:0.8;";
    this.controls = this._el("div");
    this.controls.style.cssText = "display:flex;gap:6px;align-items:center;padding:4px;flex-wrap:wrap;";
    this.playButton = this._el("button", { textContent: "\u25B6", title: "play / pause" });
    this.slider = this._el("input", { type: "range", min: 0, max: 0, value: 0, title: "time" });
    this.slider.style.flex = "1";
    this.label = this._el("span", { textContent: "0/0" });
    this.sizeLabel = this._el("span", { textContent: "size" });
    this.sizeSlider = this._el("input", { type: "range", min: 1, max: 10, step: 0.5, value: options.pointSize || 2, title: "point size" });
    this.sizeSlider.style.width = "60px";
    const check = (text, title) => {
      const box = this._el("input", { type: "checkbox", checked: true, title });
      const label = this._el("label", { textContent: ` ${text}`, title });
      label.prepend(box);
      return [box, label];
    };
    [this.frusta, this.frustaLabel] = check("cams", "camera frusta");
    [this.pointsToggle, this.pointsLabel] = check("points", "show the scene's points");
    [this.splatsToggle, this.splatsLabel] = check("splats", "show the Gaussian splats");
    this.controls.append(this.playButton, this.slider, this.label, this.sizeLabel, this.sizeSlider, this.pointsLabel,
      this.splatsLabel, this.frustaLabel);
    this.root.append(this.canvas, this.controls, this.status);
    container.appendChild(this.root);

    this.frame = 0;
    this.frameCount = 0;
    this.playing = false;
    this.renderCount = 0;
    this.asset = null;
    this.header = null;
    this._pointObjects = new Map();
    this._splatObjects = new Map();
    this._bindEvents();
    this._showLayerControls();
    this.ready = loadRenderer().then((lib) => this._init(lib));
    this.ready.catch((e) => { this.status.textContent = `FourD viewer unavailable: ${e.message}`; });
  }

  _el(tag, props) { const e = document.createElement(tag); Object.assign(e, props || {}); return e; }

  _init(L) {
    this.L = L;
    const renderer = new L.WebGLRenderer({ canvas: this.canvas, antialias: false, alpha: false, preserveDrawingBuffer: true });
    renderer.setPixelRatio(this.options.size ? 1 : (window.devicePixelRatio || 1));
    renderer.setClearColor(new L.Color().setRGB(...this.background, L.SRGBColorSpace), 1);
    this.renderer = renderer;
    this.scene = new L.Scene();
    this.camera = new L.PerspectiveCamera(50, 1, 0.01, 1000);
    this.camera.updateProjectionMatrix = () => this._applyProjection(); // intrinsics come from K, see setView
    this.spark = new L.SparkRenderer({ renderer, onDirty: () => this.requestRender(), ...SPLAT_SETTINGS });
    this.scene.add(this.spark);
    this.content = new L.Group();
    this.scene.add(this.content);
    this.pointsMaterial = new L.PointsMaterial({ size: Number(this.sizeSlider.value), sizeAttenuation: false, vertexColors: true });
    this.frustaMaterial = new L.LineBasicMaterial({ vertexColors: true });
    this.intrinsics = null;
    this._makeOrbit(new L.Vector3(0, -1, 0));
    this.setView(null);
    this._resizeObserver = typeof ResizeObserver !== "undefined" ? new ResizeObserver(() => this.requestRender()) : null;
    if (this._resizeObserver) this._resizeObserver.observe(this.canvas);
    this.requestRender();
  }

  _makeOrbit(up) {
    // OrbitControls fixes its "up" when constructed: made anew whenever the view's up changes
    if (this.orbit) this.orbit.dispose();
    this.camera.up.copy(up);
    this.orbit = new this.L.OrbitControls(this.camera, this.canvas);
    this.orbit.enableDamping = false;
    this.orbit.zoomSpeed = 1.5;
    this.orbit.addEventListener("change", () => this.requestRender()); // orbiting while it plays is fine
  }

  async loadUrl(url) {
    const r = await fetch(url);
    if (!r.ok) throw new Error(`could not fetch ${url}: ${r.status}`);
    await this.load(await r.arrayBuffer());
  }

  async load(buffer) {
    const asset = parseAsset(buffer);
    await this.ready;
    this._clear();
    this.asset = asset;
    this.header = asset.header;
    this.frameCount = asset.header.frames;
    this.slider.max = Math.max(0, this.frameCount - 1);
    this._buildFrusta();
    this._showLayerControls();
    this.resetView();
    this.setFrame(0);
    this.status.textContent = "";
  }

  _showLayerControls() {
    const a = this.asset, both = !!(a && a.points && a.splats);
    const show = (el, on) => { el.style.display = on ? "" : "none"; };
    show(this.pointsLabel, both);
    show(this.splatsLabel, both);
    show(this.sizeLabel, !a || !!a.points);
    show(this.sizeSlider, !a || !!a.points);
    show(this.frustaLabel, !a || !!this.header.cam_to_world);
  }

  _clear() {
    for (const o of this._pointObjects.values()) { this.content.remove(o); o.geometry.dispose(); }
    for (const o of this._splatObjects.values()) if (o) { this.content.remove(o); o.dispose(); }
    for (const o of [this.frustaAll, this.frustaCurrent]) if (o) { this.content.remove(o); o.geometry.dispose(); }
    this._pointObjects.clear();
    this._splatObjects.clear();
    this.frustaAll = this.frustaCurrent = null;
  }

  // --- per-frame objects, made when a frame is first shown -----------------------------------------
  _points(i) {
    const frames = this.asset.points;
    const k = Math.min(i, frames.length - 1);
    if (!this._pointObjects.has(k)) {
      const L = this.L, f = frames[k];
      const geometry = new L.BufferGeometry();
      geometry.setAttribute("position", new L.BufferAttribute(f.positions, 3));
      const colors = new Float32Array(3 * f.count);
      for (let j = 0; j < colors.length; j++) colors[j] = SRGB8_TO_LINEAR[f.colors[j]]; // three outputs sRGB
      geometry.setAttribute("color", new L.BufferAttribute(colors, 3));
      const points = new L.Points(geometry, this.pointsMaterial);
      points.frustumCulled = false;
      this.content.add(points);
      this._pointObjects.set(k, points);
    }
    return this._pointObjects.get(k);
  }

  _splats(i) {
    const frames = this.asset.splats;
    const k = Math.min(i, frames.length - 1);
    if (!this._splatObjects.has(k)) {
      const L = this.L, f = frames[k], n = f.count;
      let mesh = null;
      if (n > 0) {
        const staging = new L.ExtSplats();
        staging.ensureSplats(n);
        const c = new L.Vector3(), s = new L.Vector3(), q = new L.Quaternion(), col = new L.Color();
        const { positions: p, colors: rgb, scales: sc, rotations: r, opacities: o } = f;
        for (let j = 0; j < n; j++) {
          c.set(p[3 * j], p[3 * j + 1], p[3 * j + 2]);
          s.set(sc[3 * j], sc[3 * j + 1], sc[3 * j + 2]);
          q.set(r[4 * j + 1], r[4 * j + 2], r[4 * j + 3], r[4 * j]); // asset: w, x, y, z; three: x, y, z, w
          col.r = rgb[3 * j]; col.g = rgb[3 * j + 1]; col.b = rgb[3 * j + 2]; // as stored, no colour management
          staging.setSplat(j, c, s, q, o[j], col);
        }
        const splats = new L.ExtSplats({ extArrays: staging.extArrays, numSplats: n });
        mesh = new L.SplatMesh({ extSplats: splats, raycastable: false, editable: false });
        mesh.frustumCulled = false;
        this.content.add(mesh);
      }
      this._splatObjects.set(k, mesh);
    }
    return this._splatObjects.get(k);
  }

  _buildFrusta() {
    const L = this.L, h = this.header;
    if (!h.cam_to_world || !h.K) return;
    const lo = h.bbox_min, hi = h.bbox_max;
    const s = 0.08 * (Math.max(hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]) || 1);
    this._frustumSegments = [];
    const pos = [], col = [];
    for (let i = 0; i < h.K.length; i++) {
      const seg = this._frustum(h.K[i], h.cam_to_world[i], s);
      this._frustumSegments.push(seg);
      pos.push(...seg);
      const t = h.K.length > 1 ? i / (h.K.length - 1) : 0;
      const c = new L.Color().setRGB(1, 0.78 * (1 - t), t, L.SRGBColorSpace);
      for (let j = 0; j < seg.length / 3; j++) col.push(c.r, c.g, c.b);
    }
    const geometry = new L.BufferGeometry();
    geometry.setAttribute("position", new L.Float32BufferAttribute(pos, 3));
    geometry.setAttribute("color", new L.Float32BufferAttribute(col, 3));
    this.frustaAll = new L.LineSegments(geometry, this.frustaMaterial);
    const current = new L.BufferGeometry();
    current.setAttribute("position", new L.Float32BufferAttribute(this._frustumSegments[0], 3));
    current.setAttribute("color", new L.Float32BufferAttribute(new Array(this._frustumSegments[0].length).fill(1), 3));
    this.frustaCurrent = new L.LineSegments(current, this.frustaMaterial);
    for (const o of [this.frustaAll, this.frustaCurrent]) { o.frustumCulled = false; this.content.add(o); }
  }

  _frustum(K, c, depth) {
    const h = this.header;
    const lim = Math.tan(MAX_FOV / 2); // a degenerate focal length would draw lines across the whole scene
    const clip = (t) => Math.max(-lim, Math.min(lim, t));
    const toWorld = (u, v, z) => {
      const x = clip((u - K[0][2]) / K[0][0]) * z, y = clip((v - K[1][2]) / K[1][1]) * z;
      return [0, 1, 2].map((r) => c[r][0] * x + c[r][1] * y + c[r][2] * z + c[r][3]);
    };
    const o = [c[0][3], c[1][3], c[2][3]];
    const corners = [[-0.5, -0.5], [h.width - 0.5, -0.5], [h.width - 0.5, h.height - 0.5], [-0.5, h.height - 0.5]]
      .map(([u, v]) => toWorld(u, v, depth));
    const out = [];
    for (const k of corners) out.push(...o, ...k);
    for (let j = 0; j < 4; j++) out.push(...corners[j], ...corners[(j + 1) % 4]);
    return out;
  }

  // --- the camera ----------------------------------------------------------------------------------
  /** Look through an OpenCV camera: view = {K: 3x3, cam_to_world: 4x4 (nested arrays), width, height}.
   * The image is fitted to the canvas height (centred); with a canvas of exactly width x height pixels
   * every pixel sees what that camera's pixel sees. view = null: look along +z at the asset's bounds. */
  setView(view) {
    const L = this.L;
    const h = this.header;
    const lo = h ? h.bbox_min : [0, 0, 0], hi = h ? h.bbox_max : [1, 1, 1];
    const center = new L.Vector3((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, (lo[2] + hi[2]) / 2);
    this.extent = Math.max(hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]) || 1;
    let eye, forward, up, target;
    if (view) {
      const c = view.cam_to_world;
      eye = new L.Vector3(c[0][3], c[1][3], c[2][3]);
      forward = new L.Vector3(c[0][2], c[1][2], c[2][2]).normalize();
      up = new L.Vector3(-c[0][1], -c[1][1], -c[2][1]).normalize();
      const depth = Math.max(center.clone().sub(eye).dot(forward), 0.05 * this.extent);
      target = eye.clone().addScaledVector(forward, depth);
      const K = view.K;
      this.intrinsics = { fx: K[0][0], fy: K[1][1], skew: K[0][1], cx: K[0][2], cy: K[1][2], width: view.width, height: view.height };
    } else {
      forward = new L.Vector3(0, 0, 1);
      up = new L.Vector3(0, -1, 0);
      target = center;
      eye = center.clone().addScaledVector(forward, -1.6 * this.extent);
      const H = 480, W = 640, f = 0.5 * H / Math.tan(0.4);
      this.intrinsics = { fx: f, fy: f, skew: 0, cx: (W - 1) / 2, cy: (H - 1) / 2, width: W, height: H };
    }
    if (!this.camera.up.equals(up)) this._makeOrbit(up);
    this.camera.position.copy(eye);
    this.orbit.target.copy(target);
    this.orbit.update();
    this.camera.updateMatrixWorld(true);
    this.requestRender();
  }

  /** Orbit the camera about the target: `yaw` radians about the view's up, then `pitch` about its right
   * axis (positive looks down from above), and scale its distance by `zoom` (scripts, screenshots). */
  orbitBy(yaw, pitch = 0, zoom = 1) {
    const L = this.L, target = this.orbit.target;
    const offset = this.camera.position.clone().sub(target);
    const up = this.camera.up.clone().normalize();
    offset.applyAxisAngle(up, yaw);
    const right = new L.Vector3().crossVectors(offset, up).normalize();
    offset.applyAxisAngle(right, pitch).multiplyScalar(zoom);
    this.camera.position.copy(target).add(offset);
    this.orbit.update();
    this.requestRender();
  }

  /** The first frame's camera when the asset has a usable one, else a view of the whole bounding box (also
   * for a degenerate camera wider than 120 degrees, e.g. a failed focal-length fit). */
  resetView() {
    const h = this.header;
    const K = h && h.K && h.cam_to_world ? h.K[0] : null;
    const fov = K ? 2 * Math.atan(Math.max(h.width / K[0][0], h.height / K[1][1]) / 2) : NaN;
    this.setView(fov > 0 && fov <= MAX_FOV ? { K, cam_to_world: h.cam_to_world[0], width: h.width, height: h.height } : null);
  }

  _applyProjection() {
    const L = this.L, cam = this.camera;
    if (!this.intrinsics || !this.renderer) return;
    const size = this.renderer.getDrawingBufferSize(new L.Vector2());
    const W = size.x, H = size.y, k = this.intrinsics;
    // the reference image fitted to the canvas height, centred; pixel centres stay at integer + 0.5 in GL
    const s = H / k.height;
    const fx = k.fx * s, fy = k.fy * s, skew = k.skew * s;
    const cx = (k.cx + 0.5) * s + (W - k.width * s) / 2 - 0.5, cy = (k.cy + 0.5) * s - 0.5;
    const dist = cam.position.distanceTo(this.orbit ? this.orbit.target : cam.position);
    const near = Math.min(0.01, 0.001 * this.extent), far = 100 * (this.extent + dist);
    cam.near = near; cam.far = far;
    // OpenCV u = fx x/z + skew y/z + cx with the three.js view axes (x right, y up, looking down -z)
    cam.projectionMatrix.set(
      2 * fx / W, -2 * skew / W, 1 - 2 * (cx + 0.5) / W, 0,
      0, 2 * fy / H, 2 * (cy + 0.5) / H - 1, 0,
      0, 0, -(far + near) / (far - near), -2 * far * near / (far - near),
      0, 0, -1, 0);
    cam.projectionMatrixInverse.copy(cam.projectionMatrix).invert();
  }

  // --- time ----------------------------------------------------------------------------------------
  setFrame(i) {
    if (!this.asset) return;
    this.frame = Math.max(0, Math.min(this.frameCount - 1, i | 0));
    this.slider.value = this.frame;
    this.label.textContent = `${this.frame + 1}/${this.frameCount}`;
    const a = this.asset;
    const wantPoints = a.points && (!a.splats || this.pointsToggle.checked);
    const wantSplats = a.splats && (!a.points || this.splatsToggle.checked);
    const p = wantPoints ? this._points(this.frame) : null;
    const s = wantSplats ? this._splats(this.frame) : null;
    for (const o of this._pointObjects.values()) o.visible = o === p;
    for (const o of this._splatObjects.values()) if (o) o.visible = o === s;
    if (this.frustaCurrent && this._frustumSegments) {
      const seg = this._frustumSegments[Math.min(this.frame, this._frustumSegments.length - 1)];
      this.frustaCurrent.geometry.attributes.position.array.set(seg);
      this.frustaCurrent.geometry.attributes.position.needsUpdate = true;
    }
    this.requestRender();
  }

  play() {
    if (this.playing || this.frameCount < 2) return;
    this.playing = true;
    this.playButton.textContent = "\u275A\u275A";
    const fps = (this.header && this.header.fps) || 12;
    let last = performance.now();
    const tick = (now) => {
      if (!this.playing) return;
      if (now - last >= 1000 / fps) { last = now; this.setFrame((this.frame + 1) % this.frameCount); }
      this._playRaf = requestAnimationFrame(tick);
    };
    this._playRaf = requestAnimationFrame(tick);
  }

  pause() {
    if (!this.playing) return;
    this.playing = false;
    this.playButton.textContent = "\u25B6";
    if (this._playRaf) cancelAnimationFrame(this._playRaf);
  }

  _bindEvents() {
    this.playButton.addEventListener("click", () => (this.playing ? this.pause() : this.play()));
    this.slider.addEventListener("input", () => { this.pause(); this.setFrame(Number(this.slider.value)); });
    this.sizeSlider.addEventListener("input", () => {
      if (this.pointsMaterial) this.pointsMaterial.size = Number(this.sizeSlider.value);
      this.requestRender();
    });
    for (const box of [this.frusta, this.pointsToggle, this.splatsToggle]) box.addEventListener("change", () => this.setFrame(this.frame));
    // the graph canvas under the widget must not also pan/zoom (OrbitControls handles these on the canvas)
    for (const type of ["pointerdown", "pointermove", "wheel", "contextmenu"]) {
      this.canvas.addEventListener(type, (e) => { e.stopPropagation(); if (type === "contextmenu") e.preventDefault(); });
    }
  }

  // --- drawing -------------------------------------------------------------------------------------
  /** Draw on the next animation frame (Spark asks again when its depth sort finishes). */
  requestRender() {
    if (this._raf || !this.renderer) return;
    this._raf = requestAnimationFrame(() => { this._raf = 0; this.render(); });
  }

  render() {
    if (!this.renderer) return;
    const r = this.renderer, c = this.canvas;
    const size = this.options.size;
    const w = size ? size[0] : Math.max(1, c.clientWidth), h = size ? size[1] : Math.max(1, c.clientHeight);
    const cur = r.getSize(new this.L.Vector2());
    if (cur.x !== w || cur.y !== h) r.setSize(w, h, false);
    this._applyProjection();
    if (this.frustaAll) this.frustaAll.visible = this.frustaCurrent.visible = this.frusta.checked;
    r.render(this.scene, this.camera);
    this.renderCount++;
  }

  /** Resolves once the picture is final: frames built, Spark's depth sort done and drawn. */
  async settled(timeoutMs = 30000) {
    await this.ready;
    const t0 = performance.now();
    let quiet = 0;
    while (performance.now() - t0 < timeoutMs) {
      await new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
      const sp = this.spark;
      const busy = this._raf || sp.sorting || sp.sortDirty || sp.dirty;
      quiet = busy ? 0 : quiet + 1;
      if (quiet >= 3) return true;
    }
    return false;
  }

  destroy() {
    this.pause();
    if (this._raf) cancelAnimationFrame(this._raf);
    this._raf = -1; // no further renders
    if (this._resizeObserver) this._resizeObserver.disconnect();
    if (this.renderer) {
      this._clear();
      this.orbit.dispose();
      this.spark.dispose();
      this.pointsMaterial.dispose();
      this.frustaMaterial.dispose();
      this.renderer.dispose();
      this.renderer.forceContextLoss();
      this.renderer = null;
    }
    this.root.remove();
  }
}
