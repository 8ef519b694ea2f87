// The council dashboard: one page over GET /admin/events (server-sent events read with fetch(), so the key
// travels in the Authorization header and never in a URL), GET /admin/history and the chat API. No build step;
// one library, uPlot (vendored, loaded before this module as the global `uPlot`), draws the last hour's charts.

const $ = (id) => document.getElementById(id);
const KEY = "council-key";
const MAX_BALLOTS = 50, MAX_LOG = 400, MAX_SERIES = 64;  // MAX_SERIES: council/server/history.py's
// paletteColour(i): the shared palette (council/assets/palette.js, loaded before this module).

const state = {
  keys: false, scopes: [], members: new Map(), slots: null, councils: {}, models: [], ballots: [],
  logName: null, logLines: [], colours: new Map(), lost: {},
  history: null, pendingPoints: [],  // the last hour's series (GET /admin/history), then `history` events
  historyCapacity: 1,  // the points the router's rings hold (snapshot): what pendingPoints may keep
};
const plots = {};  // chart -> its uPlot (its `data` is what the chart shows)
window.council = { state, timings: {}, plots };  // for tests and curious operators (and `handle`, below)

// ---- small DOM helpers (no innerHTML: every value is text) ------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "colour") el.style.setProperty("--c", v);
    else if (k === "width") el.style.width = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k.startsWith("data")) el.dataset[k.slice(4, 5).toLowerCase() + k.slice(5)] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat(Infinity)) {
    if (child !== null && child !== undefined && child !== false) el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

const bytes = (n) => n >= 1 << 30 ? `${(n / (1 << 30)).toFixed(1)} GiB` : `${Math.round(n / (1 << 20))} MiB`;
const pct = (x) => x === null || x === undefined ? "–" : `${Math.round(x * 100)}%`;
const num = (x, digits = 1) => x === null || x === undefined ? "–" : Number(x).toFixed(digits);
const clock = (t) => t ? new Date(t * 1000).toLocaleTimeString() : "";
const isAdmin = () => state.scopes.includes("admin");

function colour(council) {
  if (!state.colours.has(council)) state.colours.set(council, paletteColour(state.colours.size));
  return state.colours.get(council);
}

function headers(extra = {}) {
  const key = sessionStorage.getItem(KEY);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function api(path) {
  const reply = await fetch(path, { headers: headers() });
  if (!reply.ok) throw new Error(`${path}: ${reply.status}`);
  return reply.json();
}

// ---- the event stream -------------------------------------------------------------------------------------

function setConn(s, text) {
  $("conn").dataset.state = s;
  $("conn").textContent = text;
}

async function* sseEvents(reply) {
  // The SSE wire format: events separated by a blank line; `event:`, `data:`, `id:` fields; `:` comments.
  const reader = reply.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let kind = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) kind = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      if (data && data !== "[DONE]") yield { kind, data: JSON.parse(data) };
    }
  }
}

let stream = null;

async function connect() {
  stream?.abort();
  const controller = new AbortController();
  stream = controller;
  setConn("idle", "connecting");
  let reply;
  try {
    reply = await fetch("/admin/events", { headers: headers(), signal: controller.signal });
  } catch (err) {
    if (controller.signal.aborted) return;
    return retry(controller, "router unreachable");
  }
  if (reply.status === 401 || reply.status === 403) {
    const body = await reply.json().catch(() => ({}));
    sessionStorage.removeItem(KEY);
    return askForKey(body?.error?.message || `the router answered ${reply.status}`);
  }
  if (!reply.ok) return retry(controller, `the router answered ${reply.status}`);
  setConn("live", "live");
  try {
    for await (const event of sseEvents(reply)) handle(event);
  } catch (err) {
    if (controller.signal.aborted) return;
  }
  retry(controller, "stream ended");
}

function retry(controller, why) {
  if (controller !== stream || controller.signal.aborted) return;
  setConn("retrying", `reconnecting (${why})`);
  setTimeout(() => { if (controller === stream) connect(); }, 1000);
}

window.council.handle = handle;  // an event as the stream delivers it

function handle({ kind, data }) {
  if (kind === "snapshot") return snapshot(data);
  if (kind === "member") {
    if (data.member) state.members.set(data.member.name, data.member);
    else state.members.delete(data.change.member);
    return renderMembers();
  }
  if (kind === "members") {
    state.members = new Map(data.members.map((m) => [m.name, m]));
    return renderMembers();
  }
  if (kind === "ballot") {
    state.ballots.unshift(data);
    state.ballots.length = Math.min(state.ballots.length, MAX_BALLOTS);
    return renderBallots();
  }
  if (kind === "history") return addPoint(data);
  if (kind === "lease") {
    // a reason: the council stopped (its lease lost); none: it holds its leases again and runs
    if (data.reason === null) delete state.lost[data.council];
    else state.lost[data.council] = data.reason;
    return renderSlots();
  }
  if (kind === "log" && data.member === state.logName) {
    state.logLines.push(data.line);
    if (state.logLines.length > MAX_LOG) state.logLines.splice(0, state.logLines.length - MAX_LOG);
    return appendLog(data.line);
  }
}

function snapshot(data) {
  state.scopes = data.scopes;
  state.councils = data.councils;
  state.models = data.models;
  state.ballots = [...data.ballots].reverse();
  state.members = new Map((data.members || []).map((m) => [m.name, m]));
  state.slots = data.slots || null;
  state.lost = data.lost || {};
  state.historyCapacity = data.history_capacity;
  for (const name of Object.keys(state.councils)) colour(name);
  $("who").textContent = isAdmin() ? "admin scope" : "chat scope: this key's ballots and the playground";
  for (const el of document.querySelectorAll(".admin-only")) el.hidden = !isAdmin();
  $("key-form").hidden = true;
  $("main").hidden = false;
  renderSlots();
  renderMembers();
  renderBallots();
  renderModels();
  loadHistory();
  window.council.timings.firstSnapshot ??= performance.now();
}

// ---- the last hour -----------------------------------------------------------------------------------------

const CHARTS = {  // `tick` labels the y axis
  tokens_per_second: { title: "decode tok/s per process", format: (v) => num(v), tick: (v) => num(v, 0) },
  draft_acceptance: { title: "draft acceptance per process", format: pct, tick: pct, share: true },
  requests: { title: "requests in flight and waiting", format: (v) => num(v, 0), tick: (v) => num(v, 0) },
  agreement: { title: "agreement per council", format: pct, tick: pct, share: true },
  latency: { title: "latency per council (s)", format: (v) => num(v, 2), tick: (v) => num(v, 1) },
};

let historyLoads = 0, historyRetry = null;
const HISTORY_RETRY_S = [1, 2, 4, 8, 15, 30];  // then every 30 s

async function loadHistory(attempt = 0) {
  clearTimeout(historyRetry);
  if (!attempt) state.history = null;  // until the series so far are here, new points wait in `pendingPoints`
  const load = ++historyLoads;  // a snapshot after a reload can start a load while one is still out
  const owner = stream;
  let loaded;
  try {
    loaded = await api("/admin/history");
  } catch (err) {
    if (load !== historyLoads) return;
    // A 5xx or a blip while the stream lives on: nothing else would ask again until the stream reconnects, so
    // ask again after a growing, bounded wait (while this stream is the page's; a new one loads anew).
    const wait = HISTORY_RETRY_S[Math.min(attempt, HISTORY_RETRY_S.length - 1)];
    for (const [chart, plot] of Object.entries(plots)) {  // their cells go: a later load draws them anew
      plot.destroy();
      delete plots[chart];
    }
    $("charts").replaceChildren(h("p", { class: "error" },
      `could not read the history: ${err.message} (trying again in ${wait} s)`));
    historyRetry = setTimeout(() => {
      if (load === historyLoads && owner && owner === stream) loadHistory(attempt + 1);
    }, wait * 1000);
    return;
  }
  if (load !== historyLoads) return;  // only the newest load applies (an older one may hold the old step)
  state.history = loaded;
  for (const point of state.pendingPoints.splice(0)) addPoint(point, false);
  renderCharts();
}

function addPoint(point, render = true) {
  // The server's own rule (council/server/history.py), so the page draws what GET /admin/history returns.
  const hist = state.history;
  if (!hist) {  // kept for the load; no more than the rings hold, however long the history cannot be read
    const pending = state.pendingPoints;
    pending.push(point);
    if (pending.length > state.historyCapacity) pending.splice(0, pending.length - state.historyCapacity);
    return;
  }
  if (hist.times.length && point.time <= hist.times[hist.times.length - 1]) return;
  hist.times.push(point.time);
  const size = hist.times.length, capacity = Math.max(1, Math.ceil(hist.window / hist.step));
  for (const [chart, values] of Object.entries(point.charts)) {
    const series = hist.charts[chart] ??= {};
    for (const [name, value] of Object.entries(values)) {
      if (name in series || value === null) continue;
      if (Object.keys(series).length >= MAX_SERIES) {  // the longest silent makes room, as on the server
        const silent = Object.keys(series).filter((s) => (values[s] ?? null) === null);
        const last = (s) => series[s].findLastIndex((v) => v !== null);
        if (silent.length) delete series[silent.reduce((a, b) => (last(b) < last(a) ? b : a))];
      }
      if (Object.keys(series).length < MAX_SERIES) series[name] = new Array(size - 1).fill(null);
    }
  }
  for (const [chart, series] of Object.entries(hist.charts)) {
    for (const [name, values] of Object.entries(series)) {
      values.push(point.charts[chart]?.[name] ?? null);
      if (values.length > capacity) values.splice(0, values.length - capacity);
      if (values.every((v) => v === null)) delete series[name];
    }
  }
  if (size > capacity) hist.times.splice(0, size - capacity);
  if (render) renderCharts();
}

function seriesColour(chart, name, i) {
  if (chart === "agreement" || chart === "latency") return colour(name);
  if (chart === "requests") return name === "waiting" ? "#e15759" : "#4e79a7";
  return paletteColour(i);
}

function renderCharts() {
  const hist = state.history;
  if (!hist) return;
  $("history-step").textContent = `· a point every ${hist.step} s`;
  const root = $("charts");
  for (const said of root.querySelectorAll(":scope > p.error")) said.remove();  // a failed read's, now read
  for (const [chart, spec] of Object.entries(CHARTS)) {
    let cell = root.querySelector(`[data-chart="${chart}"]`);
    if (!(chart in hist.charts)) {  // not for this scope
      cell?.remove();
      plots[chart]?.destroy();
      delete plots[chart];
      continue;
    }
    if (!cell) root.append(cell = h("div", { class: "chart", dataChart: chart }, h("h3", {}, spec.title), h("div")));
    const series = hist.charts[chart], names = Object.keys(series).sort();
    const data = [hist.times, ...names.map((n) => series[n])];
    const plot = plots[chart];
    if (plot && plot.series.length - 1 === names.length && names.every((n, i) => plot.series[i + 1].label === n)) {
      plot.setData(data);
      continue;
    }
    plot?.destroy();
    delete plots[chart];
    const box = cell.lastElementChild;
    box.replaceChildren();
    if (!names.length) {
      box.append(h("div", { class: "empty quiet" }, "nothing yet"));
      continue;
    }
    plots[chart] = new uPlot({
      width: Math.max(200, box.clientWidth || 300), height: 130, legend: { live: false },
      scales: { x: { time: true }, ...(spec.share ? { y: { range: [0, 1] } } : {}) },
      axes: [{ size: 28 }, { size: 50, values: (u, ticks) => ticks.map(spec.tick) }],
      series: [{}, ...names.map((name, i) => ({
        label: name, stroke: seriesColour(chart, name, i), width: 1.5, value: (u, v) => spec.format(v),
      }))],
    }, data, box);
  }
  if (Object.keys(plots).length) window.council.timings.firstCharts ??= performance.now();
}

window.addEventListener("resize", () => {
  for (const plot of Object.values(plots)) plot.setSize({ width: Math.max(200, plot.root.parentElement.clientWidth), height: 130 });
});

// ---- slots -----------------------------------------------------------------------------------------------

function renderSlots() {
  const plan = state.slots;
  const root = $("gpus");
  root.replaceChildren();
  if (!plan) return;
  const processes = new Map();  // process key -> {council, gpu, slots, estimate, members[]}
  for (const m of plan.members) {
    const p = processes.get(m.process) || { key: m.process, council: m.council, gpu: m.gpu, slots: m.slots,
                                            estimate: m.estimate_bytes, model: m.model, members: [] };
    p.members.push(m.name);
    processes.set(m.process, p);
  }
  for (const gpu of plan.gpus) {
    const held = [...processes.values()].filter((p) => p.gpu === gpu.id);  // by id: identical cards share a name
    const cells = [];
    for (const p of held) {
      for (let i = 0; i < p.slots; i++) {
        cells.push(h("div", { class: "slot held", colour: colour(p.council),
                              title: `${p.key} (council ${p.council}): slot ${i + 1} of ${p.slots}` }));
      }
    }
    while (cells.length < gpu.slots) cells.push(h("div", { class: "slot", title: "free" }));
    const legend = held.map((p) => {
      const size = p.slots * plan.slot_bytes;
      return h("span", { dataProcess: p.key },
        h("span", { class: "swatch", colour: colour(p.council) }), `${p.key} `,
        h("span", { class: "quiet" }, `${p.model} · ${p.slots} slot${p.slots > 1 ? "s" : ""}`),
        h("span", { class: "fill", colour: colour(p.council), title: "estimate of the slots' size" },
          h("i", { width: `${Math.min(100, 100 * p.estimate / size)}%` })),
        `${bytes(p.estimate)} of ${bytes(size)}`);
    });
    root.append(h("div", { class: "gpu", dataGpu: gpu.id },
      h("div", { class: "gpu-head" }, h("strong", {}, gpu.name),
        h("span", { class: "quiet" }, `${gpu.slots_used} of ${gpu.slots} slots of ${bytes(plan.slot_bytes)} used`)),
      h("div", { class: "strip" }, cells),
      h("div", { class: "legend" }, legend)));
  }
  const refused = plan.councils.filter((c) => !c.fits);
  if (refused.length) root.append(h("p", { class: "error" }, refused.map((c) => `council ${c.name}: ${c.reason}`).join("; ")));
  const lost = Object.entries(state.lost);
  if (lost.length) root.append(h("p", { class: "error", dataLost: "" }, lost.map(([c, why]) => `council ${c} is stopped: ${why}`).join("; ")));
}

// ---- members ---------------------------------------------------------------------------------------------

function councilOf(member) {
  const seat = member.members[0] || member.name;
  const planned = state.slots?.members.find((m) => m.process === member.name);
  return planned ? planned.council : seat.split("/")[0];
}

function renderMembers() {
  const rows = [...state.members.values()].sort((a, b) => a.name.localeCompare(b.name)).map((m) => {
    const council = councilOf(m);
    const history = m.history.slice(-4).map((c) =>
      h("span", { title: `${clock(c.at)} ${c.old} → ${c.new}: ${c.reason}` }, `${c.old}→${c.new}`));
    return h("tr", { dataName: m.name, class: m.name === state.logName ? "selected" : "", onclick: () => openLog(m.name) },
      h("td", {}, h("strong", {}, m.name), m.members.length > 1 ? h("span", { class: "reason" }, m.members.join(", ")) : null),
      h("td", {}, h("span", { class: "swatch", colour: colour(council) }), council),
      h("td", {}, m.model),
      h("td", {}, h("span", { class: "state", dataState: m.state }, m.state),
        h("span", { class: "reason" }, m.reason)),
      h("td", { class: "history" }, history),
      h("td", { class: "num pid" }, m.pid ?? "–"),
      h("td", { class: "num" }, m.port),
      h("td", { class: "num restarts" }, m.restarts),
      h("td", { class: "num" }, num(m.tokens_per_second)),
      h("td", { class: "num" }, pct(m.draft_acceptance)),
      h("td", { class: "num" }, `${m.in_flight}/${m.slots}`, m.waiting ? ` +${m.waiting} waiting` : ""));
  });
  $("member-rows").replaceChildren(...rows);
}

async function openLog(name) {
  state.logName = name;
  state.logLines = [];
  renderLog();  // another member's lines go at once
  $("log").hidden = false;
  $("log-name").textContent = name;
  renderMembers();
  try {
    // Each segment encoded (a council may be named `a#b?`): the server decodes the path before it matches
    // `{name:path}`, and the `/` between council and seat stays a separator.
    const tail = await api(`/admin/members/${name.split("/").map(encodeURIComponent).join("/")}/log`);
    if (state.logName === name) state.logLines = [...tail.lines, ...state.logLines];
  } catch (err) {
    state.logLines = [`(could not read the log: ${err.message})`];
  }
  renderLog();
}

// One text node a line. Rebuilding the whole panel for each new line (up to 400 lines of 8 KiB) froze the page for
// minutes when a member logged long lines fast; new lines are now added, and the oldest taken off, once a frame.
let logFresh = [];

function renderLog() {
  logFresh = [];
  const pre = $("log-lines");
  pre.replaceChildren(...state.logLines.map((line) => document.createTextNode(`${line}\n`)));
  pre.scrollTop = pre.scrollHeight;
}

function appendLog(line) {
  logFresh.push(line);
  if (logFresh.length === 1) requestAnimationFrame(drawFreshLog);  // none while the tab is hidden: kept bounded
  else if (logFresh.length > MAX_LOG) logFresh.splice(0, logFresh.length - MAX_LOG);
}

function drawFreshLog() {
  const pre = $("log-lines"), fresh = logFresh.slice(-MAX_LOG);
  logFresh = [];
  const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  pre.append(...fresh.map((line) => document.createTextNode(`${line}\n`)));
  while (pre.childNodes.length > MAX_LOG) pre.firstChild.remove();
  if (atBottom) pre.scrollTop = pre.scrollHeight;
}

// ---- votes -----------------------------------------------------------------------------------------------

function memberStatus(ballot, m) {
  if (m.status === "ok") return ballot.winner_members.includes(m.name) ? "winner" : "dissent";
  // "member is not ready": ballots recorded before the message named the process
  if (m.status === "error" && ["process is not ready", "member is not ready"].includes(m.error)) return "skipped";
  return m.status;
}

function chips(ballot) {
  return ballot.members.map((m) => {
    const status = memberStatus(ballot, m);
    const said = m.extracted ?? m.error ?? "";
    return h("span", { class: "chip", dataStatus: status, dataMember: m.name,
                       title: `${m.name} (${m.model}): ${status}, ${m.latency_ms} ms${said ? `: ${said}` : ""}` },
      `${m.name} ${status} ${m.latency_ms} ms`);
  });
}

function renderBallots() {
  $("no-ballots").hidden = state.ballots.length > 0;
  $("ballot-rows").replaceChildren(...state.ballots.map((b) =>
    h("tr", { dataBallot: b.id, onclick: () => openBallot(b.id) },
      h("td", {}, clock(b.created)),
      h("td", {}, h("span", { class: "swatch", colour: colour(b.council) }), b.council),
      h("td", {}, b.question ?? ""),
      h("td", { class: "answer-cell" }, b.answer ?? ""),
      h("td", { class: "agree" }, pct(b.agreement), b.early_stop ? h("span", { class: "reason" }, "early stop") : null),
      h("td", {}, chips(b)))));
}

function ballotDetails(b) {
  const meta = [["id", b.id], ["council", b.council], ["strategy", b.strategy],
    ["answer", b.answer ?? "– (nobody voted: every reply was cut off)"],
    ["agreement", pct(b.agreement)], ["votes", JSON.stringify(b.votes)], ["winners", b.winner_members.join(", ")],
    ["early stop", b.early_stop], ["degraded", b.degraded], ["tie broken by", b.tie_broken_by ?? "–"],
    ["judge fallback", b.judge_fallback]];
  if (b.extract) meta.push(["extract", b.extract]);
  return h("div", { class: "ballot", dataBallot: b.id },
    h("dl", { class: "meta" }, meta.map(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))])),
    h("table", {},
      h("thead", {}, h("tr", {}, ["member", "model", "status", "extracted", "latency", "tokens", "draft acc.", "answer"]
        .map((t) => h("th", {}, t)))),
      h("tbody", {}, b.members.map((m) => h("tr", { dataMember: m.name, dataStatus: m.status },
        h("td", {}, m.name), h("td", {}, m.model),
        h("td", {}, h("span", { class: "chip", dataStatus: memberStatus(b, m) }, memberStatus(b, m))),
        h("td", { class: "extracted" }, m.extracted ?? ""), h("td", { class: "num" }, `${m.latency_ms} ms`),
        h("td", { class: "num" }, m.completion_tokens ?? ""), h("td", { class: "num" }, pct(m.draft_acceptance)),
        h("td", {}, m.error ? h("span", { class: "error" }, m.error) : (m.answer ?? "")))))));
}

async function openBallot(id) {
  const dialog = $("ballot-dialog");
  $("ballot-full").replaceChildren(h("p", { class: "quiet" }, "loading…"));
  dialog.showModal();
  try {
    const ballot = await api(`/v1/ballots/${encodeURIComponent(id)}`);
    $("ballot-full").replaceChildren(ballotDetails(ballot),
      h("details", {}, h("summary", {}, "raw JSON"), h("pre", { class: "raw" }, JSON.stringify(ballot, null, 2))));
  } catch (err) {
    $("ballot-full").replaceChildren(h("p", { class: "error" }, err.message));
  }
}

// ---- playground ------------------------------------------------------------------------------------------

function renderModels() {
  const select = $("pg-model");
  const chosen = select.value;
  select.replaceChildren(
    h("optgroup", { label: "councils" }, Object.keys(state.councils).map((c) => h("option", { value: c }, c))),
    h("optgroup", { label: "models (one member answers)" }, state.models.map((m) => h("option", { value: m }, m))));
  if (chosen) select.value = chosen;
}

async function ask(event) {
  event.preventDefault();
  const model = $("pg-model").value, question = $("pg-question").value.trim();
  if (!model || !question) return;
  const out = $("pg-answer"), ballotBox = $("pg-ballot");
  out.textContent = "";
  out.dataset.done = "";
  ballotBox.replaceChildren(h("p", { class: "quiet" }, state.councils[model] ? "the council is voting…" : "asking…"));
  $("pg-ask").disabled = true;
  try {
    const reply = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify({ model, stream: true, messages: [{ role: "user", content: question }] }),
    });
    if (!reply.ok) {
      const body = await reply.json().catch(() => ({}));
      throw new Error(body?.error?.message || `the router answered ${reply.status}`);
    }
    let council = null, id = null;
    for await (const chunk of sseEvents(reply)) {
      if (chunk.data.error) throw new Error(chunk.data.error.message);
      id = chunk.data.id ?? id;
      out.textContent += chunk.data.choices?.[0]?.delta?.content ?? "";
      council = chunk.data.council ?? council;
    }
    out.dataset.done = "true";
    ballotBox.replaceChildren(council ? ballotDetails({ id, ...council })
      : h("p", { class: "quiet" }, "a model answers alone: no ballot"));
  } catch (err) {
    ballotBox.replaceChildren(h("p", { class: "error" }, err.message));
  } finally {
    $("pg-ask").disabled = false;
  }
}

// ---- keys and start ----------------------------------------------------------------------------------------

function askForKey(error) {
  stream?.abort();
  stream = null;
  setConn("idle", "no key");
  $("main").hidden = true;
  $("key-form").hidden = false;
  $("key-error").hidden = !error;
  $("key-error").textContent = error || "";
  $("forget-key").hidden = true;
  $("key-input").focus();
}

async function start() {
  $("pg-form").addEventListener("submit", ask);
  $("log-close").addEventListener("click", () => { state.logName = null; $("log").hidden = true; renderMembers(); });
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("key-input").value.trim());
    $("key-input").value = "";
    $("forget-key").hidden = false;
    connect();
  });
  $("forget-key").addEventListener("click", () => { sessionStorage.removeItem(KEY); askForKey(""); });
  state.keys = (await (await fetch("/ui/auth")).json()).keys;
  if (state.keys && !sessionStorage.getItem(KEY)) return askForKey("");
  $("forget-key").hidden = !state.keys;
  connect();
}

start();
