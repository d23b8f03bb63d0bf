// ComfyUI-FourD 4D point-cloud viewer: plain WebGL, no dependencies (works offline).
// Reads the "FD4D" asset written by fourd_core/io/viewer_asset.py (points, or Gaussian splats drawn as
// round splats sized by their standard deviation and faded by their opacity).
// Controls: left drag = orbit, right drag / shift+drag = pan, wheel = zoom, time slider + play/pause,
// point size, camera frusta on/off.

export function parseAsset(buffer) {
  const bytes = new Uint8Array(buffer);
  const magic = String.fromCharCode(bytes[0], bytes[1], bytes[2], bytes[3]);
  if (magic !== "FD4D") throw new Error("not a FourD viewer asset");
  const dv = new DataView(buffer);
  const headerLength = dv.getUint32(8, true);
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(12, 12 + headerLength)));
  const bodyStart = 12 + headerLength;
  const positions = [], colors = [], scales = [], opacities = [];
  for (let i = 0; i < header.frames; i++) {
    const n = header.counts[i];
    positions.push(new Float32Array(buffer, bodyStart + header.positions[i], 3 * n));
    colors.push(new Uint8Array(buffer, bodyStart + header.colors[i], 3 * n));
    if (header.splats) {
      scales.push(new Float32Array(buffer, bodyStart + header.scales[i], n));
      opacities.push(new Uint8Array(buffer, bodyStart + header.opacities[i], n));
    }
  }
  return { header, positions, colors, scales, opacities };
}

// --- small column-major mat4 helpers -------------------------------------------------------
const M = {
  perspective(fovy, aspect, near, far) {
    const f = 1 / Math.tan(fovy / 2), nf = 1 / (near - far);
    return new Float32Array([f / aspect, 0, 0, 0, 0, f, 0, 0, 0, 0, (far + near) * nf, -1, 0, 0, 2 * far * near * nf, 0]);
  },
  lookAt(eye, target, up) {
    let z = sub(eye, target); z = norm(z);
    let x = norm(cross(up, z));
    const y = cross(z, x);
    return new Float32Array([x[0], y[0], z[0], 0, x[1], y[1], z[1], 0, x[2], y[2], z[2], 0,
      -dot(x, eye), -dot(y, eye), -dot(z, eye), 1]);
  },
  mul(a, b) {
    const o = new Float32Array(16);
    for (let c = 0; c < 4; c++) for (let r = 0; r < 4; r++) {
      let s = 0;
      for (let k = 0; k < 4; k++) s += a[k * 4 + r] * b[c * 4 + k];
      o[c * 4 + r] = s;
    }
    return o;
  },
};
const sub = (a, b) => [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
const add = (a, b) => [a[0] + b[0], a[1] + b[1], a[2] + b[2]];
const scale = (a, s) => [a[0] * s, a[1] * s, a[2] * s];
const dot = (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
const cross = (a, b) => [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];
const norm = (a) => { const l = Math.hypot(a[0], a[1], a[2]) || 1; return [a[0] / l, a[1] / l, a[2] / l]; };

const VS = `attribute vec3 position; attribute vec3 color; uniform mat4 mvp; uniform float pointSize;
varying vec3 vColor; void main(){ gl_Position = mvp * vec4(position, 1.0); gl_PointSize = pointSize; vColor = color; }`;
const FS = `precision mediump float; varying vec3 vColor; void main(){ gl_FragColor = vec4(vColor, 1.0); }`;

// Gaussian splats: a point sprite of radius 2 sigma (projected), Gaussian falloff times opacity,
// alpha-tested (no sorting needed) so each splat is an opaque round disc where it is dense enough.
const SPLAT_VS = `attribute vec3 position; attribute vec3 color; attribute float sigma; attribute float opacity;
uniform mat4 mvp; uniform float focalPx; uniform float sizeScale;
varying vec3 vColor; varying float vOpacity;
void main(){ gl_Position = mvp * vec4(position, 1.0); float w = max(gl_Position.w, 1e-6);
  gl_PointSize = clamp(4.0 * sigma * focalPx * sizeScale / w, 1.0, 256.0); vColor = color; vOpacity = opacity; }`;
const SPLAT_FS = `precision mediump float; varying vec3 vColor; varying float vOpacity;
void main(){ vec2 d = gl_PointCoord * 2.0 - 1.0; float r2 = dot(d, d);
  if (vOpacity * exp(-2.0 * r2) < 0.35) discard; gl_FragColor = vec4(vColor, 1.0); }`;

function link(gl, vs, fs) {
  const prog = gl.createProgram();
  gl.attachShader(prog, compile(gl, gl.VERTEX_SHADER, vs));
  gl.attachShader(prog, compile(gl, gl.FRAGMENT_SHADER, fs));
  gl.linkProgram(prog);
  if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(prog));
  return prog;
}

function compile(gl, type, src) {
  const s = gl.createShader(type);
  gl.shaderSource(s, src);
  gl.compileShader(s);
  if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
  return s;
}

export class FourDViewer {
  constructor(container, options = {}) {
    this.container = container;
    this.root = document.createElement("div");
    this.root.className = "fourd-viewer";
    this.root.style.cssText = "display:flex;flex-direction:column;width:100%;height:100%;background:#111;color:#ddd;font:12px sans-serif;";
    this.canvas = document.createElement("canvas");
    this.canvas.style.cssText = "flex:1;width:100%;min-height:120px;display:block;touch-action:none;";
    this.controls = document.createElement("div");
    this.controls.style.cssText = "display:flex;gap:6px;align-items:center;padding:4px;flex-wrap:wrap;";
    this.playButton = this._el("button", { textContent: "\u25B6", title: "play / pause" });
    this.slider = this._el("input", { type: "range", min: 0, max: 0, value: 0, title: "time" });
    this.slider.style.flex = "1";
    this.label = this._el("span", { textContent: "0/0" });
    this.sizeSlider = this._el("input", { type: "range", min: 1, max: 10, step: 0.5, value: options.pointSize || 2, title: "point size" });
    this.sizeSlider.style.width = "60px";
    this.frusta = this._el("input", { type: "checkbox", checked: true, title: "camera frusta" });
    const frustaLabel = this._el("label", { textContent: " cams" });
    frustaLabel.prepend(this.frusta);
    this.controls.append(this.playButton, this.slider, this.label, this._el("span", { textContent: "size" }), this.sizeSlider, frustaLabel);
    this.root.append(this.canvas, this.controls);
    container.appendChild(this.root);

    const gl = this.canvas.getContext("webgl", { preserveDrawingBuffer: true, antialias: false });
    if (!gl) throw new Error("WebGL is not available in this browser");
    this.gl = gl;
    const prog = link(gl, VS, FS);
    this.prog = prog;
    this.loc = {
      position: gl.getAttribLocation(prog, "position"), color: gl.getAttribLocation(prog, "color"),
      mvp: gl.getUniformLocation(prog, "mvp"), pointSize: gl.getUniformLocation(prog, "pointSize"),
    };
    const sp = link(gl, SPLAT_VS, SPLAT_FS);
    this.splatProg = sp;
    this.splatLoc = {
      position: gl.getAttribLocation(sp, "position"), color: gl.getAttribLocation(sp, "color"),
      sigma: gl.getAttribLocation(sp, "sigma"), opacity: gl.getAttribLocation(sp, "opacity"),
      mvp: gl.getUniformLocation(sp, "mvp"), focalPx: gl.getUniformLocation(sp, "focalPx"),
      sizeScale: gl.getUniformLocation(sp, "sizeScale"),
    };
    this.frame = 0;
    this.frames = [];
    this.playing = false;
    this.yaw = 0; this.pitch = 0; this.distance = 3; this.target = [0, 0, 0]; this.fovy = 0.8;
    this._bindEvents();
    this._resizeObserver = typeof ResizeObserver !== "undefined" ? new ResizeObserver(() => this.render()) : null;
    if (this._resizeObserver) this._resizeObserver.observe(this.canvas);
  }

  _el(tag, props) { const e = document.createElement(tag); Object.assign(e, props); return e; }

  async loadUrl(url) {
    const r = await fetch(url);
    if (!r.ok) throw new Error(`could not fetch ${url}: ${r.status}`);
    this.load(await r.arrayBuffer());
  }

  load(buffer) {
    const gl = this.gl;
    for (const f of this.frames) for (const b of [f.pos, f.col, f.sigma, f.opacity]) if (b) gl.deleteBuffer(b);
    const { header, positions, colors, scales, opacities } = parseAsset(buffer);
    this.header = header;
    const upload = (data) => {
      const b = gl.createBuffer();
      gl.bindBuffer(gl.ARRAY_BUFFER, b); gl.bufferData(gl.ARRAY_BUFFER, data, gl.STATIC_DRAW);
      return b;
    };
    this.frames = positions.map((p, i) => ({
      pos: upload(p), col: upload(colors[i]), count: header.counts[i],
      sigma: header.splats ? upload(scales[i]) : null, opacity: header.splats ? upload(opacities[i]) : null,
    }));
    this._buildFrusta();
    this.slider.max = Math.max(0, header.frames - 1);
    this.resetView();
    this.setFrame(0);
  }

  resetView() {
    const h = this.header;
    const lo = h.bbox_min, hi = h.bbox_max;
    this.target = scale(add(lo, hi), 0.5);
    const extent = Math.max(hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]) || 1;
    this.distance = 1.6 * extent;
    // look along +z (the first camera's optical axis in OpenCV axes), y down on screen
    this.yaw = 0; this.pitch = 0;
    if (h.cam_to_world) {
      const c = h.cam_to_world[0];
      const eye = [c[0][3], c[1][3], c[2][3]];
      const d = Math.hypot(...sub(this.target, eye));
      if (d > 1e-6) this.distance = Math.max(d, 0.5 * extent);
    }
  }

  _buildFrusta() {
    const gl = this.gl, h = this.header;
    this.frustaBuffers = null;
    if (!h.cam_to_world || !h.K) return;
    const lo = h.bbox_min, hi = h.bbox_max;
    const s = 0.08 * (Math.max(hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]) || 1);
    const pos = [], col = [];
    for (let i = 0; i < h.frames; i++) {
      const K = h.K[i], c = h.cam_to_world[i];
      const toWorld = (u, v, z) => {
        const x = (u - K[0][2]) / K[0][0] * z, y = (v - K[1][2]) / K[1][1] * z;
        return [0, 1, 2].map((r) => c[r][0] * x + c[r][1] * y + c[r][2] * z + c[r][3]);
      };
      const o = [c[0][3], c[1][3], c[2][3]];
      const corners = [[0, 0], [h.width - 1, 0], [h.width - 1, h.height - 1], [0, h.height - 1]].map(([u, v]) => toWorld(u, v, s));
      const seg = (a, b) => { pos.push(...a, ...b); };
      for (const k of corners) seg(o, k);
      for (let j = 0; j < 4; j++) seg(corners[j], corners[(j + 1) % 4]);
      const t = h.frames > 1 ? i / (h.frames - 1) : 0;
      for (let j = 0; j < 16; j++) col.push(255, Math.round(200 * (1 - t)), Math.round(255 * t));
    }
    const pb = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, pb); gl.bufferData(gl.ARRAY_BUFFER, new Float32Array(pos), gl.STATIC_DRAW);
    const cbuf = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, cbuf); gl.bufferData(gl.ARRAY_BUFFER, new Uint8Array(col), gl.STATIC_DRAW);
    this.frustaBuffers = { pos: pb, col: cbuf, perFrame: 16, frames: h.frames };
  }

  setFrame(i) {
    if (!this.frames.length) return;
    this.frame = Math.max(0, Math.min(this.frames.length - 1, i | 0));
    this.slider.value = this.frame;
    this.label.textContent = `${this.frame + 1}/${this.frames.length}`;
    this.render();
  }

  play() {
    if (this.playing || this.frames.length < 2) return;
    this.playing = true;
    this.playButton.textContent = "\u275A\u275A";
    const fps = (this.header && this.header.fps) || 12;
    let last = performance.now();
    const tick = (now) => {
      if (!this.playing) return;
      if (now - last >= 1000 / fps) { last = now; this.setFrame((this.frame + 1) % this.frames.length); }
      this._raf = requestAnimationFrame(tick);
    };
    this._raf = requestAnimationFrame(tick);
  }

  pause() {
    this.playing = false;
    this.playButton.textContent = "\u25B6";
    if (this._raf) cancelAnimationFrame(this._raf);
  }

  _bindEvents() {
    this.playButton.addEventListener("click", () => (this.playing ? this.pause() : this.play()));
    this.slider.addEventListener("input", () => { this.pause(); this.setFrame(Number(this.slider.value)); });
    this.sizeSlider.addEventListener("input", () => this.render());
    this.frusta.addEventListener("change", () => this.render());
    let drag = null;
    this.canvas.addEventListener("contextmenu", (e) => e.preventDefault());
    this.canvas.addEventListener("pointerdown", (e) => {
      drag = { x: e.clientX, y: e.clientY, pan: e.button === 2 || e.shiftKey };
      this.canvas.setPointerCapture(e.pointerId);
      e.stopPropagation();
    });
    this.canvas.addEventListener("pointermove", (e) => {
      if (!drag) return;
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      drag.x = e.clientX; drag.y = e.clientY;
      if (drag.pan) {
        const { right, up } = this._basis();
        const k = this.distance * 0.002;
        this.target = add(this.target, add(scale(right, -dx * k), scale(up, dy * k)));
      } else {
        this.yaw -= dx * 0.01;
        this.pitch = Math.max(-1.5, Math.min(1.5, this.pitch - dy * 0.01));
      }
      this.render();
      e.stopPropagation();
    });
    const end = () => { drag = null; };
    this.canvas.addEventListener("pointerup", end);
    this.canvas.addEventListener("pointercancel", end);
    this.canvas.addEventListener("wheel", (e) => {
      this.distance *= Math.exp(e.deltaY * 0.001);
      this.render();
      e.preventDefault(); e.stopPropagation();
    }, { passive: false });
  }

  _eye() {
    // orbit around the target; yaw/pitch 0 = looking along +z (OpenCV forward), y down
    const cp = Math.cos(this.pitch), sp = Math.sin(this.pitch);
    const dir = [Math.sin(this.yaw) * cp, sp, Math.cos(this.yaw) * cp];
    return sub(this.target, scale(dir, this.distance));
  }

  _basis() {
    const eye = this._eye();
    const fwd = norm(sub(this.target, eye));
    const right = norm(cross(fwd, [0, -1, 0]));
    const up = cross(right, fwd);
    return { right, up };
  }

  render() {
    const gl = this.gl, c = this.canvas;
    const dpr = (typeof window !== "undefined" && window.devicePixelRatio) || 1;
    const w = Math.max(1, Math.round(c.clientWidth * dpr)), h = Math.max(1, Math.round(c.clientHeight * dpr));
    if (c.width !== w || c.height !== h) { c.width = w; c.height = h; }
    gl.viewport(0, 0, w, h);
    gl.clearColor(0.07, 0.07, 0.08, 1);
    gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
    if (!this.frames.length) return;
    gl.enable(gl.DEPTH_TEST);
    const near = Math.max(1e-4, this.distance * 0.01), far = this.distance * 100;
    const proj = M.perspective(this.fovy, w / h, near, far);
    const view = M.lookAt(this._eye(), this.target, [0, -1, 0]);
    const mvp = M.mul(proj, view);
    const f = this.frames[this.frame];
    if (this.header.splats) {
      this._drawSplats(f, mvp, 0.5 * h / Math.tan(this.fovy / 2));
    } else {
      gl.useProgram(this.prog);
      gl.uniformMatrix4fv(this.loc.mvp, false, mvp);
      gl.uniform1f(this.loc.pointSize, Number(this.sizeSlider.value) * dpr);
      this._draw(f.pos, f.col, gl.POINTS, 0, f.count);
    }
    gl.useProgram(this.prog);
    gl.uniformMatrix4fv(this.loc.mvp, false, mvp);
    if (this.frusta.checked && this.frustaBuffers) {
      const fb = this.frustaBuffers;
      this._draw(fb.pos, fb.col, gl.LINES, 0, fb.perFrame * fb.frames);
    }
  }

  _drawSplats(f, mvp, focalPx) {
    // the size slider (default 2) scales the splats: 2 = their true size
    const gl = this.gl, L = this.splatLoc;
    gl.useProgram(this.splatProg);
    gl.uniformMatrix4fv(L.mvp, false, mvp);
    gl.uniform1f(L.focalPx, focalPx);
    gl.uniform1f(L.sizeScale, Number(this.sizeSlider.value) / 2);
    const attrib = (buf, loc, n, type, normalized) => {
      gl.bindBuffer(gl.ARRAY_BUFFER, buf);
      gl.enableVertexAttribArray(loc);
      gl.vertexAttribPointer(loc, n, type, normalized, 0, 0);
    };
    attrib(f.pos, L.position, 3, gl.FLOAT, false);
    attrib(f.col, L.color, 3, gl.UNSIGNED_BYTE, true);
    attrib(f.sigma, L.sigma, 1, gl.FLOAT, false);
    attrib(f.opacity, L.opacity, 1, gl.UNSIGNED_BYTE, true);
    gl.drawArrays(gl.POINTS, 0, f.count);
    gl.disableVertexAttribArray(L.sigma);
    gl.disableVertexAttribArray(L.opacity);
  }

  _draw(pos, col, mode, first, count) {
    const gl = this.gl;
    gl.bindBuffer(gl.ARRAY_BUFFER, pos);
    gl.enableVertexAttribArray(this.loc.position);
    gl.vertexAttribPointer(this.loc.position, 3, gl.FLOAT, false, 0, 0);
    gl.bindBuffer(gl.ARRAY_BUFFER, col);
    gl.enableVertexAttribArray(this.loc.color);
    gl.vertexAttribPointer(this.loc.color, 3, gl.UNSIGNED_BYTE, true, 0, 0);
    gl.drawArrays(mode, first, count);
  }

  destroy() {
    this.pause();
    if (this._resizeObserver) this._resizeObserver.disconnect();
    this.root.remove();
  }
}
