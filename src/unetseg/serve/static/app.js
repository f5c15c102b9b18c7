// The unetseg web page: upload an image, draw the predicted classes over it, download the mask.
// Plain browser JavaScript, no build step and nothing loaded from elsewhere.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  let model = null;
  let maskUrl = null;

  function setState(state, text) {
    document.body.dataset.state = state;
    $("status").textContent = text;
  }

  const rgbKey = (r, g, b) => (r << 16) | (g << 8) | b;
  const css = (c) => `rgb(${c[0]}, ${c[1]}, ${c[2]})`;

  async function loadModel() {
    const response = await fetch("/model");
    model = await response.json();
    const names = model.classes.map((c) => c.name).join(", ");
    $("model-line").textContent =
      `${model.model} (${model.backend}): ${model.in_channels}-channel images, classes ${names}`;
  }

  async function errorText(response) {
    try {
      return `${response.status}: ${(await response.json()).detail}`;
    } catch (_) {
      return `${response.status} ${response.statusText}`;
    }
  }

  function pixels(bitmap) {
    const canvas = document.createElement("canvas");
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(bitmap, 0, 0);
    return ctx.getImageData(0, 0, bitmap.width, bitmap.height);
  }

  // Colour the mask: each pixel's colour in the mask file names its class (model.classes[i].mask_rgb).
  function paintOverlay(mask) {
    const lookup = new Map();
    model.classes.forEach((c, i) => { if (c.mask_rgb) lookup.set(rgbKey(...c.mask_rgb), i); });
    const src = pixels(mask).data;
    const out = new ImageData(mask.width, mask.height);
    const counts = new Array(model.classes.length).fill(0);
    for (let p = 0; p < src.length; p += 4) {
      const id = lookup.get(rgbKey(src[p], src[p + 1], src[p + 2]));
      if (id === undefined) continue;
      counts[id] += 1;
      const colour = model.classes[id].color;
      out.data[p] = colour[0];
      out.data[p + 1] = colour[1];
      out.data[p + 2] = colour[2];
      out.data[p + 3] = 255;
    }
    const canvas = $("overlay-canvas");
    canvas.width = mask.width;
    canvas.height = mask.height;
    canvas.getContext("2d").putImageData(out, 0, 0);
    return counts;
  }

  function drawImage(image, width, height) {
    const canvas = $("image-canvas");
    canvas.width = width;
    canvas.height = height;
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#222";
    ctx.fillRect(0, 0, width, height);
    if (image) ctx.drawImage(image, 0, 0, width, height);
  }

  function showLegend(counts) {
    const total = counts.reduce((a, b) => a + b, 0) || 1;
    const legend = $("legend");
    legend.replaceChildren();
    model.classes.forEach((c, i) => {
      const item = document.createElement("li");
      item.dataset.classId = String(i);
      item.dataset.value = String(c.value);
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = css(c.color);
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = c.name;
      const fraction = document.createElement("span");
      fraction.className = "fraction";
      fraction.textContent = `${((100 * counts[i]) / total).toFixed(1)}%`;
      item.append(swatch, name, fraction);
      legend.append(item);
    });
  }

  async function predict(file) {
    setState("busy", `Predicting ${file.name}…`);
    const started = performance.now();
    const form = new FormData();
    form.append("file", file, file.name);
    const response = await fetch("/predict?format=png", { method: "POST", body: form });
    if (!response.ok) throw new Error(await errorText(response));
    const blob = await response.blob();
    const mask = await createImageBitmap(blob, {
      colorSpaceConversion: "none", premultiplyAlpha: "none",
    });
    let image = null;
    try {
      image = await createImageBitmap(file);
    } catch (_) {
      image = null; // e.g. TIFF, which browsers do not decode: the overlay is shown on grey
    }
    drawImage(image, mask.width, mask.height);
    showLegend(paintOverlay(mask));
    if (maskUrl) URL.revokeObjectURL(maskUrl);
    maskUrl = URL.createObjectURL(blob);
    const link = $("download");
    link.href = maskUrl;
    link.download = `${file.name.replace(/\.[^.]+$/, "")}_mask.png`;
    $("result").hidden = false;
    const seconds = ((performance.now() - started) / 1000).toFixed(2);
    setState("done", `${file.name}: ${mask.width} x ${mask.height} pixels in ${seconds} s`);
  }

  function run(file) {
    if (!file) return;
    predict(file).catch((err) => setState("error", `Prediction failed: ${err.message}`));
  }

  function setOpacity() {
    const value = Number($("opacity").value);
    $("overlay-canvas").style.opacity = String(value / 100);
    $("opacity-value").textContent = `${value}%`;
  }

  function wire() {
    const drop = $("drop");
    $("file").addEventListener("change", (e) => run(e.target.files[0]));
    drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("over");
      run(e.dataTransfer.files[0]);
    });
    $("opacity").addEventListener("input", setOpacity);
    setOpacity();
  }

  wire();
  loadModel().catch((err) => setState("error", `Cannot read /model: ${err.message}`));
})();
