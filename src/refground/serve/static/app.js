// The refground page: send image + expression to POST /ground, draw the answer on a canvas.
// Plain JS, no build step. The canvas gets data-box="x0,y0,x1,y1" (image pixels) and
// data-score once a box is drawn, so tests and scripts can read what was shown.
"use strict";

const $ = (id) => document.getElementById(id);
let bitmap = null;   // the chosen image, decoded upright (EXIF applied, as the server does)
let bitmapReady = Promise.resolve();  // settles once the chosen image is decoded
let latest = 0;      // only the newest request may draw

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function setStatus(message) {
  $("status").textContent = message;
}

let summaries = {};

// One line under the menu saying what the chosen method does.
function showSummary() {
  $("summary").textContent = summaries[$("method").value] || "";
}

async function loadMethods() {
  try {
    const response = await fetch("/methods");
    const body = await response.json();
    const select = $("method");
    select.replaceChildren();
    summaries = body.summaries || {};
    for (const name of body.methods) {
      const option = new Option(name === body.default ? `${name} (default)` : name, name);
      option.selected = name === body.default;
      select.append(option);
    }
    showSummary();
  } catch (error) {
    showError(`could not list methods: ${error}`);
  }
}

function lineWidth(width, height) {
  return Math.max(3, Math.round(Math.min(width, height) / 100));
}

// Strokes are drawn inside the box, so the box's own edge pixels carry the colour.
function strokeBox(ctx, box, width) {
  const [x0, y0, x1, y1] = box;
  const inset = Math.min(width / 2, (x1 - x0) / 2, (y1 - y0) / 2);
  ctx.lineWidth = width;
  ctx.strokeRect(x0 + inset, y0 + inset, Math.max(0, x1 - x0 - 2 * inset),
                 Math.max(0, y1 - y0 - 2 * inset));
}

function drawImage(width, height) {
  const canvas = $("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, width, height);
  if (bitmap) ctx.drawImage(bitmap, 0, 0, width, height);
  return ctx;
}

function drawResult(result) {
  const canvas = $("canvas");
  const ctx = drawImage(result.width, result.height);
  const width = lineWidth(result.width, result.height);
  const same = (a, b) => a.every((v, i) => v === b[i]);
  ctx.save();
  ctx.globalAlpha = 0.55;
  ctx.strokeStyle = "#ffd400";
  for (const candidate of result.candidates) {
    if (!same(candidate.box, result.box)) strokeBox(ctx, candidate.box, Math.max(1, width / 2));
  }
  ctx.restore();
  ctx.strokeStyle = "#ff0000";
  strokeBox(ctx, result.box, width);
  canvas.dataset.box = result.box.join(",");
  canvas.dataset.score = String(result.score);
  const score = result.score === null ? "n/a" : result.score.toFixed(4);
  const others = Math.max(0, result.candidates.length - 1);
  $("score").textContent = `score ${score} · ${result.method} · ${others} runner-up(s)` +
    (result.fallback ? ` · fallback: ${result.fallback}` : "") +
    ` · ${result.seconds.toFixed(2)} s`;
}

function clearResult() {
  const canvas = $("canvas");
  delete canvas.dataset.box;
  delete canvas.dataset.score;
  $("score").textContent = "";
}

async function decode(file) {
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
    drawImage(bitmap.width, bitmap.height);
  } catch (error) {
    showError("this browser cannot display the image; the server may still read it");
  }
}

function chooseImage() {
  clearResult();
  showError("");
  bitmap = null;
  const file = $("image").files[0];
  bitmapReady = file ? decode(file) : Promise.resolve();
}

function errorMessage(response, body) {
  if (body && typeof body.detail === "string") return body.detail;
  if (body && body.detail) return JSON.stringify(body.detail);
  return `the server answered ${response.status} ${response.statusText}`;
}

async function submit(event) {
  event.preventDefault();
  const request = ++latest;
  clearResult();
  showError("");
  const file = $("image").files[0];
  if (!file) {
    showError("choose an image first");
    return;
  }
  const form = new FormData();
  form.append("image", file);
  form.append("text", $("text").value);
  if ($("method").value) form.append("method", $("method").value);
  for (const name of ["boxes", "options"]) {
    const value = $(name).value.trim();
    if (value) form.append(name, value);
  }
  $("submit").disabled = true;
  setStatus("grounding…");
  try {
    const response = await fetch("/ground", { method: "POST", body: form });
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    await bitmapReady;
    if (request !== latest) return;
    if (!response.ok) {
      showError(errorMessage(response, body));
      return;
    }
    drawResult(body);
  } catch (error) {
    if (request === latest) showError(`request failed: ${error}`);
  } finally {
    if (request === latest) {
      $("submit").disabled = false;
      setStatus("");
    }
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("form").addEventListener("submit", submit);
  $("image").addEventListener("change", chooseImage);
  $("method").addEventListener("change", showSummary);
  loadMethods();
});
