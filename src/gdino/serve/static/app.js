// gdino web page: upload an image, send it to /v1/detect (or /v1/segment), draw the answer.
// No external assets: works offline, served by the same process as the API.
"use strict";
const $ = (id) => document.getElementById(id);
const COLORS = ["#e53935", "#1e88e5", "#43a047", "#fb8c00", "#8e24aa", "#00acc1", "#fdd835", "#6d4c41"];
let file = null;
let info = null;

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

function headers() {
  const key = $("key").value;
  return key ? { "X-API-Key": key } : {};
}

async function loadInfo() {
  try {
    const r = await fetch("/v1/info");
    info = await r.json();
    $("model").textContent = `${info.weights} on ${info.device || "?"}${info.ready ? "" : " (loading)"}`;
    $("seg-label").hidden = !info.segmenter;
    $("key-label").hidden = !info.api_key_required;
    if (info.defaults) {
      $("box").value = info.defaults.box_threshold; $("box-out").value = info.defaults.box_threshold;
      $("txt").value = info.defaults.text_threshold; $("txt-out").value = info.defaults.text_threshold;
    }
    if (!info.ready) setTimeout(loadInfo, 1000);
  } catch (e) {
    $("model").textContent = "server unreachable";
  }
}

function choose(f) {
  if (!f) return;
  file = f;
  $("photo").src = URL.createObjectURL(f);
  clearDrawing();
  $("submit").disabled = false;
  setStatus(`${f.name}: ready`);
}

function clearDrawing() {
  $("overlay").replaceChildren();
  $("table").tBodies[0].replaceChildren();
  const c = $("masks");
  c.getContext("2d").clearRect(0, 0, c.width, c.height);
  $("download").hidden = true;
}

// COCO compressed RLE -> run lengths (column-major, first run = zeros).
function rleRuns(counts) {
  const runs = [];
  let p = 0;
  while (p < counts.length) {
    let x = 0, k = 0, more = true;
    while (more) {
      const c = counts.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = (c & 0x20) !== 0;
      p++; k++;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (runs.length > 2) x += runs[runs.length - 2];
    runs.push(x);
  }
  return runs;
}

function drawMask(ctx, rle, color) {
  const [h, w] = rle.size;
  const img = ctx.getImageData(0, 0, w, h);
  const rgb = [1, 3, 5].map((i) => parseInt(color.slice(i, i + 2), 16));
  let pos = 0;
  rleRuns(rle.counts).forEach((run, i) => {
    if (i % 2 === 1) {
      for (let j = pos; j < pos + run; j++) {
        const y = j % h, x = Math.floor(j / h), o = 4 * (y * w + x);
        img.data[o] = rgb[0]; img.data[o + 1] = rgb[1]; img.data[o + 2] = rgb[2]; img.data[o + 3] = 110;
      }
    }
    pos += run;
  });
  ctx.putImageData(img, 0, 0);
}

function draw(doc) {
  clearDrawing();
  const res = doc.results[0];
  const svg = $("overlay");
  svg.setAttribute("viewBox", `0 0 ${res.width} ${res.height}`);
  const canvas = $("masks");
  canvas.width = res.width; canvas.height = res.height;
  const ctx = canvas.getContext("2d");
  const body = $("table").tBodies[0];
  res.detections.forEach((d, i) => {
    const color = COLORS[(d.class_id ?? i) % COLORS.length];
    const [x0, y0, x1, y1] = d.box;
    if (d.mask) drawMask(ctx, d.mask, color);
    const rect = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    rect.setAttribute("class", "box");
    rect.setAttribute("x", x0); rect.setAttribute("y", y0);
    rect.setAttribute("width", Math.max(x1 - x0, 1)); rect.setAttribute("height", Math.max(y1 - y0, 1));
    rect.setAttribute("stroke", color);
    const label = document.createElementNS("http://www.w3.org/2000/svg", "text");
    label.setAttribute("x", x0 + 3); label.setAttribute("y", y0 + 16);
    label.textContent = `${d.label} ${d.score.toFixed(2)}`;
    svg.append(rect, label);
    const row = body.insertRow();
    [i + 1, d.label, d.score.toFixed(3), d.box.map((v) => v.toFixed(1)).join(", ")].forEach((v) => {
      row.insertCell().textContent = v;
    });
  });
  const blob = new Blob([JSON.stringify(doc, null, 2)], { type: "application/json" });
  $("download").href = URL.createObjectURL(blob);
  $("download").hidden = false;
}

async function submit(ev) {
  ev.preventDefault();
  if (!file) return setStatus("choose an image first", true);
  const text = $("text").value.trim();
  if (!text) return setStatus("type a caption or class names", true);
  const form = new FormData();
  form.append("image", file, file.name);
  const mode = document.querySelector("input[name=mode]:checked").value;
  form.append(mode, text);
  form.append("box_threshold", $("box").value);
  form.append("text_threshold", $("txt").value);
  const route = $("segment").checked ? "/v1/segment" : "/v1/detect";
  $("submit").disabled = true;
  setStatus("running...");
  const t0 = performance.now();
  try {
    const r = await fetch(route, { method: "POST", body: form, headers: headers() });
    const doc = await r.json();
    if (!r.ok) throw new Error(`${r.status}: ${doc.error || r.statusText}`);
    draw(doc);
    const n = doc.results[0].detections.length;
    setStatus(`${n} detection${n === 1 ? "" : "s"} in ${Math.round(performance.now() - t0)} ms`);
  } catch (e) {
    setStatus(String(e.message || e), true);
  } finally {
    $("submit").disabled = false;
  }
}

$("file").addEventListener("change", (e) => choose(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); choose(e.dataTransfer.files[0]); });
$("box").addEventListener("input", () => { $("box-out").value = $("box").value; });
$("txt").addEventListener("input", () => { $("txt-out").value = $("txt").value; });
document.querySelectorAll("input[name=mode]").forEach((r) => r.addEventListener("change", () => {
  $("text").placeholder = r.value === "classes" ? "cat, remote control" : "a cat . a remote control";
}));
$("form").addEventListener("submit", submit);
loadInfo();
