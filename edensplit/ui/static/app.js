// The page's script: upload, start, follow (a poll every 250 ms), cancel, and the download link when done.
"use strict";
const pageId = crypto.randomUUID ? crypto.randomUUID() : String(Math.random()).slice(2);
const $ = (id) => document.getElementById(id);
let job = null;
let timer = null;

function headers(extra) {
  const h = Object.assign({"X-Page-ID": pageId}, extra || {});
  const key = $("key").value;
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function call(method, url, body, extra) {
  const response = await fetch(url, {method, body, headers: headers(extra)});
  const document_ = await response.json().catch(() => null);
  if (!response.ok) {
    const error = document_ && document_.error ? document_.error : {message: "HTTP " + response.status};
    if (response.status === 401) $("key-row").hidden = false;
    throw new Error(error.message);
  }
  return document_.data;
}

function clock(seconds) {
  const s = Math.round(seconds), m = Math.floor(s / 60);
  return m + ":" + String(s % 60).padStart(2, "0");
}

function show(status) {
  const progress = $("progress");
  if (status.total) { progress.max = status.total; progress.value = status.done; }
  let text = status.done + (status.total ? "/" + status.total : "") + " frames";
  if (status.frames_per_s) text += ", " + status.frames_per_s.toFixed(1) + " frames/s";
  if (status.seconds_left !== null && status.seconds_left !== undefined) text += ", " + clock(status.seconds_left) + " left";
  if (status.state !== "running") text += " (" + status.state + ")";
  $("figures").textContent = text;
  if (status.preview) {
    $("preview-box").hidden = false;
    if ($("preview").getAttribute("src") !== status.preview) $("preview").src = status.preview;
  }
  $("error").textContent = status.error || "";
}

function finished(status) {
  clearInterval(timer);
  timer = null;
  $("start").disabled = false;
  $("cancel").disabled = true;
  if (status.state === "done") {
    const link = document.createElement("a");
    link.href = status.result;
    link.download = status.filename;
    link.textContent = "Download " + status.filename;
    $("result").replaceChildren(link);
  }
}

async function poll() {
  try {
    const status = await call("GET", "/api/jobs/" + job);
    show(status);
    if (status.state !== "running") finished(status);
  } catch (e) {
    $("error").textContent = e.message;
  }
}

$("job").addEventListener("submit", async (event) => {
  event.preventDefault();
  const files = Array.from($("files").files);
  $("error").textContent = "";
  $("result").replaceChildren();
  $("preview-box").hidden = true;
  $("progress").removeAttribute("value");
  $("start").disabled = true;
  try {
    $("figures").textContent = "Uploading " + files.map((f) => f.name).join(", ") + "...";
    const uploads = [];
    for (const file of files) {
      const done = await call("POST", "/api/uploads?name=" + encodeURIComponent(file.name), file,
                              {"Content-Type": "application/octet-stream"});
      uploads.push(done.upload_id);
    }
    const status = await call("POST", "/api/jobs", JSON.stringify({uploads, multi: Number($("multi").value)}),
                              {"Content-Type": "application/json"});
    job = status.id;
    $("progress").value = 0;
    show(status);
    $("cancel").disabled = false;
    timer = setInterval(poll, 250);
  } catch (e) {
    $("error").textContent = e.message;
    $("figures").textContent = "Not started.";
    $("start").disabled = false;
  }
});

$("cancel").addEventListener("click", async () => {
  $("cancel").disabled = true;
  try {
    const status = await call("POST", "/api/jobs/" + job + "/cancel");
    show(status);
    finished(status);
  } catch (e) {
    $("error").textContent = e.message;
  }
});

fetch("/api/config").then((r) => r.json()).then((config) => { if (config.data.keyed) $("key-row").hidden = false; });
