// Draw a digit: a packed BNN (bnnlib.book.draw) run in the browser with XNOR-popcount.
//
// One file, two hosts: an anywidget view in JupyterLab (export default { render }) and a
// static HTML page with no kernel (mountStatic, appended by bnnlib.book.draw.view_html).
// The arithmetic is PackedNet's, integer for integer (paper Sections 1.6, 3.2 and 4):
//   first layer  t = 2 W_b.x - 255 sum(W_b), W_b.x = sum_n 2^n (2 popcount(x^n & w) - popcount(x^n))
//                on the 8 bit planes x^n of the 8-bit image; fires iff t >= T (or t <= T)
//   hidden layer s = k - 2 popcount(a XOR w); fires iff s >= T (or s <= T)
//   last layer   score = a (s - mu) + beta in float64, the prediction its argmax (first max)

const SIZE = 28; // the network's input: 28 x 28 pixels, 0..255
const BIG = 280; // the drawing canvas, in canvas pixels
const BOX = 20; // MNIST: the digit's bounding box is scaled to fit 20 x 20, then centred
const PEN = 22; // pen width on the drawing canvas

function popcount(x) {
  x = x - ((x >>> 1) & 0x55555555);
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  return Math.imul((x + (x >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24;
}

// ---- the model ------------------------------------------------------------------------------

// The header's layers, checked before anything runs (bnnlib.book.draw.weights.check_layers
// checks the same): the first takes 784 pixels, each takes what the one before gives,
// row_words is that of `in` inputs, sign layers then one scores layer, every array inside the
// body at an offset aligned for its type. Throws an Error naming the layer and the field.
export function checkModel(header, bodyBytes) {
  const layers = header && header.layers;
  if (!Array.isArray(layers) || !layers.length) throw new Error("the header has no layers");
  const isCount = (v) => Number.isSafeInteger(v) && v >= 0;
  let prev = SIZE * SIZE;
  layers.forEach((L, i) => {
    const where = `layer ${i}`;
    if (!L || typeof L !== "object") throw new Error(`${where} is not an object`);
    for (const key of ["in", "out", "row_words", "weight"]) {
      if (!isCount(L[key])) throw new Error(`${where}: ${key} must be an integer >= 0`);
    }
    const last = i === layers.length - 1;
    if (L.kind !== (last ? "scores" : "sign") || L.first !== (i === 0)) {
      throw new Error(`${where}: kind ${L.kind}, first ${L.first}; want sign layers, then ` +
                      "one scores layer, the first one first");
    }
    if (L.in !== prev || L.out < 1) {
      throw new Error(`${where} takes ${L.in} inputs, the layer before gives ${prev}`);
    }
    if (L.row_words !== 2 * Math.ceil(L.in / 64)) { // the 64-bit words of kernels.pack
      throw new Error(`${where}: row_words ${L.row_words} does not hold ${L.in} inputs`);
    }
    const arrays = [["weight", 4, L.out * L.row_words]];
    for (const t of last ? ["a", "mu", "beta"] : ["threshold", "direction"]) {
      arrays.push([t, last ? 8 : 4, L.out]);
    }
    for (const [key, size, count] of arrays) {
      const off = L[key];
      if (!isCount(off) || off % size) throw new Error(`${where}: offset ${key} is not aligned`);
      if (off + size * count > bodyBytes) {
        throw new Error(`${where}: ${key} lies outside the file (a truncated file?)`);
      }
    }
    prev = L.out;
  });
}

export function parseModel(buffer) {
  const u8 = new Uint8Array(buffer);
  const magic = String.fromCharCode(u8[0], u8[1], u8[2], u8[3]);
  if (u8.length < 8 || magic !== "BNND") {
    throw new Error(`not a bnnlib draw-a-digit model (magic ${JSON.stringify(magic)})`);
  }
  const n = new DataView(buffer).getUint32(4, true);
  let header;
  try {
    header = JSON.parse(new TextDecoder().decode(u8.subarray(8, 8 + n)));
  } catch (err) {
    throw new Error(`the model's header is not JSON (${err.message})`);
  }
  if (!header || header.version !== 1) {
    throw new Error(`draw-a-digit model version ${header && header.version}, want 1`);
  }
  const base = header.body_offset;
  if (!Number.isSafeInteger(base) || base < 8 + n || base > u8.length || base % 8) {
    throw new Error(`body_offset ${base} is not an aligned offset inside the file`);
  }
  checkModel(header, u8.length - base);
  const view = (Type, offset, count) => new Type(buffer, base + offset, count);
  const layers = header.layers.map((L) => {
    const out = { ...L, w: view(Uint32Array, L.weight, L.out * L.row_words) };
    if (L.kind === "scores") {
      out.a = view(Float64Array, L.a, L.out);
      out.mu = view(Float64Array, L.mu, L.out);
      out.beta = view(Float64Array, L.beta, L.out);
    } else {
      out.thr = view(Int32Array, L.threshold, L.out);
      out.dir = view(Int32Array, L.direction, L.out);
    }
    return out;
  });
  return { header, layers, bytes: buffer.byteLength };
}

// The network on one image (784 uint8 pixels): scores (Float64Array), the prediction, and per
// hidden layer its packed output bits and how many of them are +1 ("fire").
export function forward(model, pixels) {
  let act = null;
  const fires = [];
  const bits = [];
  for (const L of model.layers) {
    const W = L.row_words;
    const next = L.kind === "scores" ? null : new Uint32Array(Math.ceil(L.out / 32));
    const scores = L.kind === "scores" ? new Float64Array(L.out) : null;
    let planes = null;
    const planeCount = new Int32Array(8);
    if (L.first) {
      planes = new Uint32Array(8 * W);
      for (let i = 0; i < L.in; i++) {
        const v = pixels[i];
        for (let b = 0; b < 8; b++) {
          if ((v >> b) & 1) planes[b * W + (i >>> 5)] |= 1 << (i & 31);
        }
      }
      for (let b = 0; b < 8; b++) {
        for (let k = 0; k < W; k++) planeCount[b] += popcount(planes[b * W + k]);
      }
    }
    let count = 0;
    for (let j = 0; j < L.out; j++) {
      const row = j * W;
      let s;
      if (L.first) {
        let dot = 0;
        let ones = 0;
        for (let k = 0; k < W; k++) ones += popcount(L.w[row + k]);
        for (let b = 0; b < 8; b++) {
          let c = 0;
          for (let k = 0; k < W; k++) c += popcount(planes[b * W + k] & L.w[row + k]);
          dot += (2 * c - planeCount[b]) * (1 << b);
        }
        s = 2 * dot - 255 * (2 * ones - L.in); // 255 x the pre-activation, an integer
      } else {
        let c = 0;
        for (let k = 0; k < W; k++) c += popcount(act[k] ^ L.w[row + k]);
        s = L.in - 2 * c;
      }
      if (scores) {
        const x = L.first ? s / 255 : s;
        scores[j] = L.a[j] * (x - L.mu[j]) + L.beta[j];
      } else if (L.dir[j] >= 0 ? s >= L.thr[j] : s <= L.thr[j]) {
        next[j >>> 5] |= 1 << (j & 31);
        count++;
      }
    }
    if (scores) {
      let best = 0;
      for (let j = 1; j < scores.length; j++) if (scores[j] > scores[best]) best = j;
      return { scores, prediction: best, fires, bits };
    }
    fires.push(count);
    bits.push(next);
    act = next;
  }
  throw new Error("the model has no scores layer");
}

// ---- the input: strokes to a 28 x 28 MNIST-like image --------------------------------------

// gray: Float32Array (width x height) in [0, 1]. As MNIST: the ink's bounding box scaled to fit
// BOX x BOX by area averaging (anti-aliased), placed so that its centre of mass is the centre.
export function toMnist(gray, width, height) {
  let x0 = width, y0 = height, x1 = -1, y1 = -1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (gray[y * width + x] > 0.02) {
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
        if (y < y0) y0 = y;
        if (y > y1) y1 = y;
      }
    }
  }
  const out = new Uint8Array(SIZE * SIZE);
  if (x1 < 0) return out;
  const w = x1 - x0 + 1, h = y1 - y0 + 1;
  const scale = BOX / Math.max(w, h);
  const tw = Math.max(1, Math.round(w * scale)), th = Math.max(1, Math.round(h * scale));
  const sum = new Float64Array(tw * th), cnt = new Float64Array(tw * th);
  for (let y = y0; y <= y1; y++) {
    const ty = Math.min(th - 1, Math.floor((y - y0) * scale));
    for (let x = x0; x <= x1; x++) {
      const tx = Math.min(tw - 1, Math.floor((x - x0) * scale));
      sum[ty * tw + tx] += gray[y * width + x];
      cnt[ty * tw + tx] += 1;
    }
  }
  let m = 0, mx = 0, my = 0;
  for (let ty = 0; ty < th; ty++) {
    for (let tx = 0; tx < tw; tx++) {
      const v = cnt[ty * tw + tx] ? sum[ty * tw + tx] / cnt[ty * tw + tx] : 0;
      sum[ty * tw + tx] = v;
      m += v;
      mx += v * (tx + 0.5);
      my += v * (ty + 0.5);
    }
  }
  const clamp = (v, hi) => Math.max(0, Math.min(hi, v));
  const ox = clamp(Math.round(SIZE / 2 - mx / m), SIZE - tw);
  const oy = clamp(Math.round(SIZE / 2 - my / m), SIZE - th);
  for (let ty = 0; ty < th; ty++) {
    for (let tx = 0; tx < tw; tx++) {
      out[(oy + ty) * SIZE + ox + tx] = Math.round(255 * Math.min(1, sum[ty * tw + tx]));
    }
  }
  return out;
}

export function base64Bytes(text) {
  const raw = atob(text);
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

// ---- the view ---------------------------------------------------------------------------------

const CSS = `
.bnn-draw{font-family:sans-serif;font-size:13px;display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
.bnn-draw canvas.pad{border:1px solid #888;touch-action:none;cursor:crosshair;background:#000}
.bnn-draw .col{display:flex;flex-direction:column;gap:6px;max-width:300px}
.bnn-draw button{font-size:12px;margin:1px;padding:2px 6px}
.bnn-draw .bar{display:flex;align-items:center;gap:4px;height:17px}
.bnn-draw .bar span.d{width:12px;text-align:right;font-weight:bold}
.bnn-draw .bar div.b{height:12px;background:#9ab;min-width:1px}
.bnn-draw .bar.best div.b{background:#d62728}
.bnn-draw .bar span.v{color:#555;font-size:11px}
.bnn-draw .big{font-size:44px;font-weight:bold;line-height:1}
.bnn-draw canvas.px{image-rendering:pixelated;border:1px solid #ccc}
.bnn-draw .err{color:#b00}
`;

function el(tag, attrs = {}, parent = null, text = null) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== null) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}

// Builds the view in `root`. opts: examples (Uint8Array n x 784), labels, onInput(pixels,
// result) after each new input. Returns the view's API (also set as root.bnnDraw).
export function createView(root, model, opts = {}) {
  root.innerHTML = "";
  root.classList.add("bnn-draw");
  el("style", {}, root, CSS);
  const left = el("div", { class: "col" }, root);
  const pad = el("canvas", { class: "pad", width: BIG, height: BIG }, left);
  pad.style.width = pad.style.height = `${BIG}px`;
  const ctx = pad.getContext("2d", { willReadFrequently: true });
  const tools = el("div", {}, left);
  const clearButton = el("button", { type: "button" }, tools, "clear");
  const examples = opts.examples || new Uint8Array(0);
  const nEx = Math.floor(examples.length / (SIZE * SIZE));
  if (nEx) el("span", {}, tools, " test images: ");
  const exButtons = [];
  for (let i = 0; i < nEx; i++) {
    const label = opts.labels && opts.labels[i] !== undefined ? `#${i} (${opts.labels[i]})` : `#${i}`;
    exButtons.push(el("button", { type: "button" }, tools, label));
  }
  el("div", { style: "color:#555;max-width:280px" }, left,
    "Draw a digit with the mouse (or a finger). It is scaled into a 20 x 20 box and centred, " +
    "as MNIST digits are, then run by the packed network in this page.");

  const mid = el("div", { class: "col" }, root);
  el("div", {}, mid, "what the network sees (28 x 28)");
  const px = el("canvas", { class: "px", width: SIZE, height: SIZE }, mid);
  px.style.width = px.style.height = "112px";
  el("div", {}, mid, "prediction");
  const big = el("div", { class: "big" }, mid, "–");
  const timing = el("div", { style: "color:#555;font-size:11px;max-width:150px" }, mid);
  const kernel = el("div", { style: "color:#555;font-size:11px;max-width:150px" }, mid);

  const right = el("div", { class: "col" }, root);
  el("div", {}, right, "scores of the ten classes");
  const bars = [];
  const nClasses = model.layers[model.layers.length - 1].out;
  for (let d = 0; d < nClasses; d++) {
    const row = el("div", { class: "bar" }, right);
    el("span", { class: "d" }, row, String(d));
    const b = el("div", { class: "b" }, row);
    const v = el("span", { class: "v" }, row);
    bars.push({ row, b, v });
  }

  const layersCol = el("div", { class: "col" }, root);
  el("div", {}, layersCol, "hidden layers: which bits fire (+1, white)");
  const hidden = model.layers.filter((L) => L.kind !== "scores").map((L, i) => {
    const label = el("div", {}, layersCol);
    const cols = 64, rows = Math.ceil(L.out / cols);
    const c = el("canvas", { class: "px", width: cols, height: rows }, layersCol);
    c.style.width = `${2 * cols}px`;
    c.style.height = `${2 * rows}px`;
    return { L, i, label, c, cols, rows };
  });

  let pixels = new Uint8Array(SIZE * SIZE);
  let result = null;
  let fromExample = false;

  function showPixels() {
    const img = new ImageData(SIZE, SIZE);
    for (let i = 0; i < SIZE * SIZE; i++) {
      img.data.set([pixels[i], pixels[i], pixels[i], 255], 4 * i);
    }
    px.getContext("2d").putImageData(img, 0, 0);
  }

  function run(notify = true) {
    const t0 = performance.now();
    result = forward(model, pixels);
    const ms = performance.now() - t0;
    big.textContent = String(result.prediction);
    const s = Array.from(result.scores);
    const lo = Math.min(...s), hi = Math.max(...s);
    s.forEach((v, d) => {
      bars[d].b.style.width = `${Math.round(2 + 160 * (hi > lo ? (v - lo) / (hi - lo) : 1))}px`;
      bars[d].v.textContent = v.toFixed(2);
      bars[d].row.classList.toggle("best", d === result.prediction);
    });
    for (const h of hidden) {
      h.label.textContent = `hidden ${h.i + 1}: ${result.fires[h.i]} of ${h.L.out} bits fire`;
      const img = new ImageData(h.cols, h.rows);
      const words = result.bits[h.i];
      for (let j = 0; j < h.L.out; j++) {
        const on = (words[j >>> 5] >>> (j & 31)) & 1 ? 255 : 0;
        img.data.set([on, on, on, 255], 4 * j);
      }
      h.c.getContext("2d").putImageData(img, 0, 0);
    }
    timing.textContent =
      `${(model.bytes / 1e6).toFixed(2)} MB packed model, XNOR-popcount in this page: ` +
      `${ms.toFixed(1)} ms`;
    showPixels();
    root.dataset.prediction = String(result.prediction);
    if (notify && opts.onInput) opts.onInput(pixels, result);
    return result;
  }

  function clearPad() {
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, BIG, BIG);
  }

  function fromPad() {
    const rgba = ctx.getImageData(0, 0, BIG, BIG).data;
    const gray = new Float32Array(BIG * BIG);
    for (let i = 0; i < gray.length; i++) gray[i] = rgba[4 * i] / 255;
    pixels = toMnist(gray, BIG, BIG);
    return run();
  }

  function setPixels(p, notify = true) {
    pixels = Uint8Array.from(p);
    // The pad shows the image enlarged; the next stroke starts a new drawing.
    const img = new ImageData(SIZE, SIZE);
    for (let i = 0; i < SIZE * SIZE; i++) img.data.set([pixels[i], pixels[i], pixels[i], 255], 4 * i);
    const tmp = document.createElement("canvas");
    tmp.width = tmp.height = SIZE;
    tmp.getContext("2d").putImageData(img, 0, 0);
    clearPad();
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(tmp, 0, 0, BIG, BIG);
    fromExample = true;
    return run(notify);
  }

  // ---- drawing: pointer events (mouse, pen, touch) ----
  let drawing = false;
  let pending = false;
  const pos = (e) => {
    const r = pad.getBoundingClientRect();
    return [((e.clientX - r.left) * BIG) / r.width, ((e.clientY - r.top) * BIG) / r.height];
  };
  function begin(x, y) {
    if (fromExample) clearPad();
    fromExample = false;
    drawing = true;
    ctx.strokeStyle = "#fff";
    ctx.fillStyle = "#fff";
    ctx.lineWidth = PEN;
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.arc(x, y, PEN / 2, 0, 2 * Math.PI);
    ctx.fill();
    ctx.beginPath();
    ctx.moveTo(x, y);
  }
  function extend(x, y) {
    if (!drawing) return;
    ctx.lineTo(x, y);
    ctx.stroke();
    ctx.beginPath();
    ctx.moveTo(x, y);
    if (!pending) {
      // live: the network runs at most once a frame while the pen moves
      pending = true;
      requestAnimationFrame(() => {
        pending = false;
        fromPad();
      });
    }
  }
  function end() {
    if (!drawing) return;
    drawing = false;
    fromPad();
  }
  pad.addEventListener("pointerdown", (e) => {
    try {
      pad.setPointerCapture(e.pointerId);
    } catch (_) {
      // a synthetic event has no active pointer to capture
    }
    begin(...pos(e));
    e.preventDefault();
  });
  pad.addEventListener("pointermove", (e) => extend(...pos(e)));
  pad.addEventListener("pointerup", end);
  pad.addEventListener("pointercancel", end);
  pad.addEventListener("pointerleave", end);
  clearButton.addEventListener("click", () => {
    clearPad();
    pixels = new Uint8Array(SIZE * SIZE);
    run();
  });
  exButtons.forEach((b, i) =>
    b.addEventListener("click", () => setPixels(examples.subarray(i * SIZE * SIZE, (i + 1) * SIZE * SIZE))),
  );

  clearPad();
  if (nEx) setPixels(examples.subarray(0, SIZE * SIZE), false);
  else run(false);

  const api = {
    model,
    get pixels() {
      return pixels;
    },
    get result() {
      return result;
    },
    setPixels,
    // A stroke through canvas points [[x, y], ...] (0..280), as the pointer handlers draw it.
    stroke(points) {
      begin(...points[0]);
      for (const p of points.slice(1)) extend(...p);
      return end() || result;
    },
    clear: () => clearButton.click(),
    showKernel(text) {
      kernel.textContent = text;
    },
  };
  root.bnnDraw = api;
  return api;
}

function showError(root, message) {
  root.innerHTML = "";
  el("div", { class: "err", style: "color:#b00;font-family:sans-serif" }, root, message);
  root.dataset.error = message;
}

// ---- host 1: a static page, no kernel --------------------------------------------------------

// The weights come from a script beside the page (bnnlib.book.draw.write_assets writes it),
// which sets globalThis.bnnDrawWeights[key] to their base64; a <script src> loads from file://
// pages too, where fetch() is refused. Calls done(bytes) or fail(message): invalid base64 too,
// so the page shows an error, never "Loading..." forever.
function loadAsset(opts, done, fail) {
  const store = (globalThis.bnnDrawWeights = globalThis.bnnDrawWeights || {});
  const decode = () => {
    let bytes;
    try {
      bytes = base64Bytes(store[opts.key]);
    } catch (err) {
      return fail(`${opts.assetUrl} holds invalid base64 (${err.message}); rebuild the page's ` +
                  "assets with bnnlib.book.draw.write_assets(html_dir)");
    }
    return done(bytes);
  };
  if (store[opts.key]) return decode();
  const s = document.createElement("script");
  s.src = opts.assetUrl;
  s.onload = () =>
    store[opts.key]
      ? decode()
      : fail(`${opts.assetUrl} holds the weights of another model; rebuild the page's assets ` +
             "with bnnlib.book.draw.write_assets(html_dir)");
  s.onerror = () =>
    fail(`the model's weights (${opts.assetUrl}) were not found beside this page; the site ` +
         "build writes them with bnnlib.book.draw.write_assets(html_dir)");
  document.head.appendChild(s);
}

export function mountStatic(root, opts) {
  loadAsset(
    opts,
    (bytes) => {
      try {
        const model = parseModel(bytes.buffer);
        const examples = opts.examples ? base64Bytes(opts.examples) : null;
        createView(root, model, { examples, labels: opts.labels });
        root.dataset.ready = "1";
      } catch (err) {
        showError(root, `draw-a-digit: ${err.message}`);
      }
    },
    (message) => showError(root, `draw-a-digit: ${message}`),
  );
}

// ---- host 2: anywidget (JupyterLab) ----------------------------------------------------------

function dataViewBytes(v) {
  if (!v) return new Uint8Array(0);
  if (v instanceof ArrayBuffer) return new Uint8Array(v);
  return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
}

// The weights (1.3 MB) are not a synced trait, so that a saved notebook's widget state stays
// small: the view asks the kernel for them with a custom message and gets them as a buffer.
// With no kernel to answer (a page that embeds the widget state), it loads them as a static
// page does, from the script beside the page.
function render({ model, el: root }) {
  root.textContent = "Loading the packed model from the kernel…";
  let started = false;
  const onMessage = (msg, buffers) => {
    if (!msg || msg.type !== "weights" || started) return;
    started = true;
    model.off("msg:custom", onMessage);
    start(model, root, dataViewBytes(buffers && buffers[0]));
  };
  model.on("msg:custom", onMessage);
  model.send({ type: "weights?" });
  const timer = setTimeout(() => {
    if (started) return;
    const opts = { key: model.get("asset_key"), assetUrl: model.get("asset_url") };
    loadAsset(
      opts,
      (bytes) => {
        if (started) return;
        started = true;
        model.off("msg:custom", onMessage);
        start(model, root, bytes);
      },
      (message) => started || showError(root, `draw-a-digit: no kernel answered, and ${message}`),
    );
  }, 3000);
  return () => clearTimeout(timer);
}

function start(model, root, weights) {
  try {
    const parsed = parseModel(weights.slice().buffer); // a copy: aligned at offset 0
    const view = createView(root, parsed, {
      examples: dataViewBytes(model.get("examples")).slice(),
      labels: model.get("example_labels"),
      onInput(pixels, result) {
        model.set("pixels", Array.from(pixels));
        model.set("js_prediction", result.prediction);
        model.save_changes();
      },
    });
    const showKernel = () => {
      const k = model.get("kernel_prediction");
      if (k >= 0) {
        const same = view.result && k === view.result.prediction;
        view.showKernel(`kernel (PackedNet.predict): ${k}${same ? ", the same" : ", DIFFERENT"}`);
      }
    };
    model.on("change:kernel_prediction", showKernel);
    model.on("change:pixels", () => {
      const p = model.get("pixels");
      const cur = view.pixels;
      if (p.length === cur.length && p.some((v, i) => v !== cur[i])) view.setPixels(p, false);
      showKernel();
    });
    // Tell the kernel what is shown first, so that it can check it too.
    model.set("pixels", Array.from(view.pixels));
    model.set("js_prediction", view.result.prediction);
    model.save_changes();
  } catch (err) {
    showError(root, `draw-a-digit: ${err.message}`);
  }
}

export default { render };
