// qml dashboard: live updates over one WebSocket (polling fallback) and actions.
// No framework, no third-party code. Every value shown comes from server-rendered,
// escaped HTML or is set with textContent.
const body = document.body;
const api = body.dataset.api;
const conn = document.getElementById("conn");
const content = document.getElementById("content");
const toast = document.getElementById("toast");
const POLL_MS = 2000;
let lastDigest = null;
let refreshing = false;
let refreshAgain = false;
let pollTimer = null;
let socket = null;
let failures = 0;

function setMode(mode, label) {
  conn.textContent = label;
  conn.className = "pill " + mode;
  body.dataset.liveMode = mode;
}

function showToast(text, isError) {
  toast.textContent = text;
  toast.className = "toast" + (isError ? " error" : "");
  toast.hidden = false;
  clearTimeout(showToast.timer);
  showToast.timer = setTimeout(() => { toast.hidden = true; }, 4000);
}

function applyCounts(counts) {
  for (const el of document.querySelectorAll("[data-count]")) {
    const n = counts[el.dataset.count];
    if (n !== undefined) el.textContent = String(n);
  }
}

let pendingRefresh = false;
let allMatching = null;  // {estimate, exact} once "select all matching" is on

function selectionActive() {
  return allMatching !== null || content.querySelector("input.sel:checked") !== null;
}

async function refreshContent() {
  // live updates pause while rows are selected, so the selection is kept
  if (selectionActive()) { pendingRefresh = true; return; }
  if (refreshing) { refreshAgain = true; return; }
  refreshing = true;
  try {
    const url = new URL(body.dataset.liveUrl, location.href);
    url.searchParams.set("fragment", "1");
    const res = await fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } });
    if (res.ok) {
      const html = await res.text();
      const active = document.activeElement;
      if (selectionActive()) {
        pendingRefresh = true;
      } else if (!(active && content.contains(active) && active.matches("select,textarea,input:not([type=checkbox])"))) {
        content.innerHTML = html;  // server-rendered and escaped by Jinja
        body.dataset.refreshed = String(Date.now());
        for (const op of knownOps.values()) applyOperation(op);
        drawLiveChart();
      }
    }
  } catch (e) {
    // transient: the next change or poll retries
  } finally {
    refreshing = false;
    if (refreshAgain) { refreshAgain = false; refreshContent(); }
  }
}

function onSnapshot(msg) {
  if (msg.throughput) onThroughput(msg.throughput);
  const digest = JSON.stringify([msg.counts, msg.queues, msg.paused]);
  if (msg.counts) applyCounts(msg.counts);
  if (lastDigest !== null && digest !== lastDigest) refreshContent();
  lastDigest = digest;
}

async function poll() {
  try {
    const res = await fetch(api + "/stats?minutes=1", { credentials: "same-origin" });
    if (res.ok) {
      const s = await res.json();
      const queues = {};
      for (const [q, c] of Object.entries(s.by_queue)) {
        queues[q] = Object.fromEntries(Object.entries(c).filter(([, n]) => n));
      }
      const qres = await fetch(api + "/queues", { credentials: "same-origin" });
      const paused = qres.ok ? (await qres.json()).filter((q) => q.paused).map((q) => q.name).sort() : [];
      onSnapshot({ counts: s.counts, queues, paused });
    }
  } catch (e) {
    // keep polling
  }
}

function startPolling() {
  if (pollTimer !== null) return;
  setMode("polling", "Polling");
  poll();
  pollTimer = setInterval(poll, POLL_MS);
}

function stopPolling() {
  if (pollTimer !== null) { clearInterval(pollTimer); pollTimer = null; }
}

function connect() {
  const url = new URL(api + "/ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  let opened = false;
  try {
    socket = new WebSocket(url);
  } catch (e) {
    startPolling();
    return;
  }
  socket.addEventListener("message", (ev) => {
    let msg;
    try { msg = JSON.parse(ev.data); } catch (e) { return; }
    if (msg.op === "hello") {
      // live only once the server spoke: a proxy that accepts and drops the
      // socket counts as a failure, so the page falls back to polling
      opened = true;
      failures = 0;
      stopPolling();
      setMode("live", "Live");
    } else if (msg.op === "stats") onSnapshot(msg);
    else if (msg.op === "op.progress") onOperation(msg.operation);
    else if (msg.op === "resync") refreshContent();
  });
  socket.addEventListener("close", () => {
    socket = null;
    failures += opened ? 0 : 1;
    if (failures >= 3) {
      startPolling();
      setTimeout(connect, 15000);  // keep trying to go live again
    } else {
      if (pollTimer === null) setMode("reconnecting", "Reconnecting…");
      const delay = opened ? 500 : Math.min(250 * 2 ** Math.max(failures - 1, 0), 5000);
      setTimeout(connect, delay);
    }
  });
}

async function runAction(button) {
  const message = button.dataset.confirm;
  if (message && !(await askConfirm(message, null))) return;
  button.disabled = true;
  try {
    const res = await fetch(button.dataset.action, {
      method: button.dataset.method || "POST",
      credentials: "same-origin",
      headers: { "X-QML-Request": "1", "Accept": "application/json" },
    });
    if (res.ok) {
      showToast(button.textContent.trim() + ": done", false);
    } else {
      let detail = res.status + " " + res.statusText;
      try { detail = (await res.json()).detail || detail; } catch (e) { /* not JSON */ }
      showToast(button.textContent.trim() + " failed: " + detail, true);
    }
  } catch (e) {
    showToast("request failed: " + e, true);
  } finally {
    button.disabled = false;
    refreshContent();
  }
}

document.addEventListener("click", (ev) => {
  const button = ev.target.closest("button[data-action]");
  if (button) { ev.preventDefault(); runAction(button); return; }
  const bulk = ev.target.closest("button[data-bulk]");
  if (bulk) { ev.preventDefault(); runBulk(bulk); return; }
  if (ev.target.closest("button[data-select-all-matching]")) { ev.preventDefault(); selectAllMatching(); return; }
  if (ev.target.closest("button[data-select-clear]")) { ev.preventDefault(); clearSelection(); }
});

content.addEventListener("change", (ev) => {
  const t = ev.target;
  if (t.matches("[data-select-page]")) {
    for (const box of content.querySelectorAll("input.sel")) box.checked = t.checked;
    allMatching = null;
  } else if (t.matches("input.sel")) {
    allMatching = null;
  } else return;
  updateBulkBar();
});

// ------------------------------------------------------------------ confirmation dialog
function askConfirm(text, typedCount) {
  const dlg = document.getElementById("confirm");
  if (!dlg || typeof dlg.showModal !== "function") return Promise.resolve(window.confirm(text));
  document.getElementById("confirm-text").textContent = text;
  const typed = document.getElementById("confirm-typed");
  const input = document.getElementById("confirm-input");
  typed.hidden = typedCount === null;
  input.value = "";
  if (typedCount !== null) document.getElementById("confirm-count").textContent = String(typedCount);
  return new Promise((resolve) => {
    const ok = document.getElementById("confirm-ok");
    const cancel = document.getElementById("confirm-cancel");
    const finish = (value) => {
      ok.onclick = null; cancel.onclick = null; dlg.oncancel = null;
      if (dlg.open) dlg.close();
      resolve(value);
    };
    ok.onclick = () => {
      if (typedCount !== null && input.value.trim() !== String(typedCount)) {
        showToast("Type " + typedCount + " to confirm", true);
        input.focus();
        return;
      }
      finish(true);
    };
    cancel.onclick = () => finish(false);
    dlg.oncancel = () => finish(false);
    dlg.showModal();
    (typedCount !== null ? input : ok).focus();
  });
}

// ------------------------------------------------------------------ selection and bulk operations
function bulkBar() { return content.querySelector("[data-testid=bulk-bar]"); }
function selectedIds() { return [...content.querySelectorAll("input.sel:checked")].map((b) => b.value); }

function updateBulkBar() {
  const bar = bulkBar();
  if (bar) {
    const text = bar.querySelector("[data-testid=selection-text]");
    const ids = selectedIds();
    if (allMatching !== null) {
      text.textContent = "All " + allMatching.estimate + (allMatching.exact ? "" : "+") +
        " jobs matching " + bar.dataset.filterText + " are selected.";
    } else if (ids.length) {
      text.textContent = ids.length + " job" + (ids.length === 1 ? "" : "s") + " selected on this page.";
    } else {
      text.textContent = "No job selected.";
    }
    const any = allMatching !== null || ids.length > 0;
    for (const b of bar.querySelectorAll("[data-bulk]")) {
      b.disabled = !any;
      const verb = b.dataset.bulk.charAt(0).toUpperCase() + b.dataset.bulk.slice(1);
      b.textContent = allMatching !== null ? verb + " all " + allMatching.estimate : verb + " selected";
    }
    bar.querySelector("[data-select-clear]").hidden = !any;
  }
  if (!selectionActive() && pendingRefresh) { pendingRefresh = false; refreshContent(); }
}

function clearSelection() {
  allMatching = null;
  for (const box of content.querySelectorAll("input.sel,[data-select-page]")) box.checked = false;
  updateBulkBar();
}

async function postOperation(payload) {
  const res = await fetch(api + "/operations", {
    method: "POST",
    credentials: "same-origin",
    headers: { "X-QML-Request": "1", "Accept": "application/json", "Content-Type": "application/json" },
    body: JSON.stringify(payload),
  });
  let data = null;
  try { data = await res.json(); } catch (e) { /* not JSON */ }
  if (!res.ok) throw new Error((data && data.detail) || (res.status + " " + res.statusText));
  return data;
}

async function selectAllMatching() {
  const bar = bulkBar();
  if (!bar) return;
  try {
    const est = await postOperation({ action: "retry", filter: JSON.parse(bar.dataset.filter), dry_run: true });
    allMatching = { estimate: est.estimate, exact: est.estimate_exact };
    for (const box of content.querySelectorAll("input.sel,[data-select-page]")) box.checked = true;
  } catch (e) {
    showToast("could not count the matching jobs: " + e.message, true);
  }
  updateBulkBar();
}

async function runBulk(button) {
  const bar = bulkBar();
  const action = button.dataset.bulk;
  const verb = action.charAt(0).toUpperCase() + action.slice(1);
  let payload, text, typed = null;
  if (allMatching !== null) {
    const filter = JSON.parse(bar.dataset.filter);
    // recount: the dialog states the count the operation will start from
    try {
      const est = await postOperation({ action, filter, dry_run: true });
      allMatching = { estimate: est.estimate, exact: est.estimate_exact };
    } catch (e) { /* keep the earlier count */ }
    const n = allMatching.estimate;
    text = verb + " all " + n + (allMatching.exact ? "" : "+") + " jobs matching " + bar.dataset.filterText +
      "? Jobs created from now on are not included.";
    if (n > 1000) typed = n;
    payload = { action, filter };
  } else {
    const ids = selectedIds();
    if (!ids.length) return;
    text = verb + " " + ids.length + " selected job" + (ids.length === 1 ? "" : "s") + "?";
    payload = { action, ids };
  }
  if (!(await askConfirm(text, typed))) return;
  button.disabled = true;
  try {
    const created = await postOperation(payload);
    showToast(verb + ": operation started", false);
    if (payload.filter) {
      location.href = body.dataset.root + "/operations#op-" + created.id;
      return;
    }
    clearSelection();
  } catch (e) {
    showToast(verb + " failed: " + e.message, true);
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------------------ operation progress
const FINAL = ["completed", "cancelled", "failed"];
const knownOps = new Map();  // id -> newest progress message

function onOperation(op) {
  if (!op) return;
  knownOps.set(op.id, op);
  if (knownOps.size > 100) knownOps.delete(knownOps.keys().next().value);
  if (!applyOperation(op) && body.dataset.page === "operations") refreshContent();
}

// Show an operation's progress in its row; false if the row is not on the page.
// A row never goes backwards: a fragment rendered before the newest message
// was applied gets the message re-applied (see refreshContent).
function applyOperation(op) {
  const row = content.querySelector('tr[data-operation-id="' + CSS.escape(op.id) + '"]');
  if (!row) return false;
  const done = op.processed + op.failed;
  const shownFinal = FINAL.includes(row.dataset.status);
  if (shownFinal && !FINAL.includes(op.status)) return true;
  if (!FINAL.includes(op.status) && done < Number(row.dataset.done || 0)) return true;
  row.dataset.done = String(done);
  row.dataset.status = op.status;
  const bar = row.querySelector("[data-col=bar]");
  const total = Math.max(1, op.total);
  bar.max = total;
  bar.value = op.status === "completed" ? total : Math.min(op.processed + op.failed, total);
  const pct = Math.floor(op.progress * 100) + "%";
  bar.textContent = pct;
  row.querySelector("[data-col=percent]").textContent = pct;
  row.querySelector("[data-col=processed]").textContent =
    op.processed + " / " + op.total + (op.estimate_exact ? "" : "+");
  row.querySelector("[data-col=failed]").textContent = String(op.failed);
  const badge = row.querySelector("[data-col=status] .badge");
  badge.textContent = op.status;
  badge.className = "badge badge-op-" + op.status;
  if (FINAL.includes(op.status)) {
    const cancel = row.querySelector("[data-op-cancel]");
    if (cancel) cancel.remove();
  }
  return true;
}

// ------------------------------------------------------------------ live throughput chart
const WINDOW_S = 300;
const rates = new Map();  // epoch second -> [succeeded, failed]
let lastThroughput = null;

function onThroughput(t) {
  const prev = lastThroughput;
  lastThroughput = t;
  if (prev === null) return;
  let ok, fail;
  if (t.minute === prev.minute) {
    ok = t.succeeded - prev.succeeded; fail = t.failed - prev.failed;
  } else if (t.prev_minute === prev.minute) {
    ok = t.prev_succeeded - prev.succeeded + t.succeeded; fail = t.prev_failed - prev.failed + t.failed;
  } else {
    ok = t.succeeded; fail = t.failed;
  }
  const sec = Math.floor(Date.now() / 1000);
  const cur = rates.get(sec) || [0, 0];
  rates.set(sec, [cur[0] + Math.max(0, ok), cur[1] + Math.max(0, fail)]);
  drawLiveChart();
}

function drawLiveChart() {
  const canvas = document.getElementById("live-chart");
  const now = Math.floor(Date.now() / 1000);
  for (const sec of rates.keys()) if (sec <= now - WINDOW_S) rates.delete(sec);
  if (!canvas || !canvas.getContext) return;
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  let peak = 1, recentOk = 0, recentFail = 0;
  for (const [sec, [ok, fail]] of rates) {
    peak = Math.max(peak, ok, fail);
    if (sec > now - 5) { recentOk += ok; recentFail += fail; }
  }
  const css = getComputedStyle(document.documentElement);
  const series = [[0, css.getPropertyValue("--ok").trim() || "green"], [1, css.getPropertyValue("--fail").trim() || "red"]];
  for (const [index, color] of series) {
    ctx.beginPath();
    ctx.strokeStyle = color;
    ctx.lineWidth = 1.5;
    for (let i = 0; i < WINDOW_S; i++) {
      const sec = now - WINDOW_S + 1 + i;
      const v = (rates.get(sec) || [0, 0])[index];
      const x = (i / (WINDOW_S - 1)) * w;
      const y = h - 2 - (v / peak) * (h - 4);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    }
    ctx.stroke();
  }
  canvas.dataset.peak = String(peak);
  canvas.dataset.samples = String(rates.size);
  const label = document.querySelector("[data-testid=live-rate]");
  if (label && lastThroughput !== null) {
    label.textContent = "last 5 s: " + (recentOk / 5).toFixed(1) + " succeeded/s, " +
      (recentFail / 5).toFixed(1) + " failed/s (peak " + peak + "/s)";
  }
}

setInterval(drawLiveChart, 1000);

if ("WebSocket" in window) connect(); else startPolling();
