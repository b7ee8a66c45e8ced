// Operator dashboard page: one websocket of JSON updates from mpc-dashboard, plain DOM and SVG.
"use strict";

const $ = (id) => document.getElementById(id);
const jpeg = (b64) => "data:image/jpeg;base64," + b64;
const fmt = (v, digits = 2) => (v === null || v === undefined || Number.isNaN(v) ? "n/a" : Number(v).toFixed(digits));

const state = {
  plans: new Map(),      // step -> plan update (recent ones)
  afters: new Map(),     // step -> base64 JPEG of the frame after that step's action
  actions: [],           // [step, applied or sent (5)] most recent last
  heldPlan: null,
  status: {}, episode: {}, collect: {}, arm: {}, link: {},
};
const KEEP = 64;
const ACTION_RANGE = [0.05, 0.05, 0.05, 0.3, 1.0];  // default step limits; only scales the plot

function newRun(run) {
  // Another run started publishing: nothing of the previous one may be mistaken for it.
  state.run = run;
  state.plans.clear();
  state.afters.clear();
  state.actions = [];
  state.heldPlan = null;
  state.lastStep = undefined;
  state.episode = {}; state.collect = {};
  $("collect").hidden = true;
  $("predicted").replaceChildren(); $("predicted").dataset.step = "-1";
  $("actual").replaceChildren();
  $("costs").replaceChildren(); $("actions").replaceChildren();
  $("goal").removeAttribute("src");
}

function trim(map) {
  while (map.size > KEEP) map.delete(map.keys().next().value);
}

// --- updates from the server ---------------------------------------------------------------

const handlers = {
  frame(u) {
    const img = $("live");
    img.src = jpeg(u.jpeg);
    img.dataset.seq = u.seq;
    $("live-info").textContent = `frame ${u.seq}, ${u.width}x${u.height}, age at read ${fmt(1000 * u.age_s, 0)} ms`;
  },
  plan(u) {
    state.plans.set(u.step, u);
    trim(state.plans);
    renderPlan();
    renderCosts(u);
  },
  step(u) {
    if (u.after) state.afters.set(u.step, u.after);
    trim(state.afters);
    const a = u.applied || u.sent;
    if (a) state.actions.push([u.step, a]);
    if (state.actions.length > 50) state.actions.splice(0, state.actions.length - 50);
    renderPlan();
    renderActions();
    state.lastStep = u;
    renderProgress();
  },
  episode(u) {
    state.episode = u;
    if (u.goal) $("goal").src = jpeg(u.goal);
    const bits = [u.task && `task ${u.task}`, u.seed !== undefined && u.seed !== null && `seed ${u.seed}`,
      u.predictor && `predictor ${u.predictor}`].filter(Boolean);
    $("episode-info").textContent = bits.join(", ");
    renderProgress();
  },
  status(u) {
    state.status = u;
    $("run-kind").textContent = u.kind || "run";
    const phase = $("run-phase");
    phase.textContent = u.paused ? "PAUSED" : (u.phase || "-");
    phase.className = "pill " + (u.paused ? "warn" : u.phase === "finished" ? "" : "ok");
    renderStatus();
    renderProgress();
  },
  collect(u) {
    state.collect = u;
    $("collect").hidden = false;
    const share = u.total ? Math.min(1, u.value / u.total) : 0;
    $("collect-progress").firstElementChild.style.width = `${100 * share}%`;
    const faults = Object.entries(u.faults || {}).map(([k, v]) => `${k} ${v}`).join(", ") || "none";
    $("collect-info").textContent = `${fmt(u.value, 1)} / ${fmt(u.total, 1)} ${u.unit || ""}; episodes ` +
      `${u.episodes_total} (${u.episodes_this_run} this run); frames ${u.frames_total}; ` +
      `episode ${u.episode ?? "-"} step ${u.episode_step ?? "-"}/${u.episode_steps ?? "-"}; faults: ${faults}`;
  },
  arm(u) {
    state.arm = u;
    const el = $("arm-state");
    if (u.reachable === null || u.reachable === undefined) {
      el.className = "state unknown"; el.textContent = "controller: unknown";
    } else if (!u.reachable) {
      el.className = "state unreachable"; el.textContent = "controller: UNREACHABLE";
    } else if (u.estopped) {
      el.className = "state estopped"; el.textContent = "E-STOPPED (latched)";
    } else {
      el.className = "state ok"; el.textContent = u.watchdog_stopped ? "controller: ok (watchdog stop)" : "controller: ok";
    }
    renderStatus();
  },
  link(u) {
    state.link = u;
    const el = $("link");
    if (u.silent_s === null || u.silent_s === undefined) { el.textContent = "no telemetry yet"; el.className = "pill warn"; }
    else if (state.status.phase === "finished") { el.textContent = "run finished"; el.className = "pill"; }
    else if (u.silent_s > 3) { el.textContent = `run silent ${fmt(u.silent_s, 0)} s`; el.className = "pill bad"; }
    else { el.textContent = "live"; el.className = "pill ok"; }
    renderStatus();
  },
};

// --- rendering ----------------------------------------------------------------------------

function strip(el, images, count) {
  el.replaceChildren();
  for (let i = 0; i < count; i++) {
    if (images[i]) {
      const img = document.createElement("img");
      img.src = jpeg(images[i]);
      el.appendChild(img);
    } else {
      const empty = document.createElement("div");
      empty.className = "empty";
      el.appendChild(empty);
    }
  }
}

function shownPlan() {
  if ($("hold").checked && state.heldPlan) return state.heldPlan;
  const steps = [...state.plans.keys()];
  const plan = steps.length ? state.plans.get(Math.max(...steps)) : null;
  state.heldPlan = plan;
  return plan;
}

function renderPlan() {
  const plan = shownPlan();
  if (!plan) return;
  const horizon = plan.actions ? plan.actions.length : (plan.predicted || []).length;
  const predicted = $("predicted");
  if (predicted.dataset.step !== String(plan.step) || predicted.childElementCount !== horizon) {
    strip(predicted, plan.predicted || [], horizon);
    predicted.dataset.step = plan.step;
  }
  const actual = [];
  for (let j = 0; j < horizon; j++) actual.push(state.afters.get(plan.step + j));
  strip($("actual"), actual, horizon);
  const a = plan.action || [];
  $("plan-info").textContent = `step ${plan.step}: cost ${fmt(plan.cost)}, ${fmt(plan.plan_time_s)} s, ` +
    `action [${a.map((v) => fmt(v, 3)).join(", ")}]`;
}

function polyline(points, cls) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  el.setAttribute("points", points.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" "));
  el.setAttribute("class", cls);
  return el;
}

function label(x, y, text) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", "text");
  el.setAttribute("x", x); el.setAttribute("y", y); el.textContent = text;
  return el;
}

function renderCosts(plan) {
  const svg = $("costs");
  svg.replaceChildren();
  const series = [[plan.iteration_costs || [], "best"], [plan.iteration_mean_costs || [], "mean"]];
  const all = series.flatMap(([s]) => s).filter((v) => v !== null);
  if (!all.length) return;
  const lo = Math.min(...all), hi = Math.max(...all), span = hi - lo || 1;
  const n = Math.max(...series.map(([s]) => s.length));
  const x = (i) => (n > 1 ? 20 + (260 * i) / (n - 1) : 150);
  const y = (v) => 135 - (120 * (v - lo)) / span;
  for (const [s, cls] of series) {
    const pts = s.map((v, i) => [x(i), y(v ?? hi)]);
    if (pts.length === 1) pts.push([pts[0][0] + 1, pts[0][1]]);
    svg.appendChild(polyline(pts, cls));
  }
  svg.appendChild(label(2, 12, fmt(hi)));
  svg.appendChild(label(2, 146, fmt(lo)));
  svg.dataset.iterations = n;
}

function renderActions() {
  const svg = $("actions");
  svg.replaceChildren();
  const rows = state.actions;
  if (!rows.length) return;
  const n = rows.length;
  const x = (i) => (n > 1 ? (300 * i) / (n - 1) : 150);
  for (let d = 0; d < 5; d++) {
    const pts = rows.map(([, a], i) => [x(i), 75 - (65 * Math.max(-1, Math.min(1, a[d] / ACTION_RANGE[d])))]);
    if (pts.length === 1) pts.push([pts[0][0] + 1, pts[0][1]]);
    svg.appendChild(polyline(pts, `a${d}`));
  }
  svg.appendChild(label(2, 12, `steps ${rows[0][0]}-${rows[n - 1][0]}`));
}

function renderStatus() {
  const s = state.status, a = state.arm, cam = s.camera || {}, link = state.link;
  const rows = [
    ["controller", a.reachable ? (a.estopped ? "E-STOPPED" : "ok") : a.reachable === false ? "unreachable" : "unknown"],
    ["controller round trip", a.rtt_ms !== undefined ? `${fmt(a.rtt_ms, 1)} ms` : "n/a"],
    ["controller endpoint", a.endpoint || "not known yet"],
    ["watchdog stop", a.watchdog_stopped ? "yes" : "no"],
    ["last command seq", a.last_command_seq ?? "n/a"],
    ["camera frame age at read", cam.age_ms !== undefined ? `${fmt(cam.age_ms, 0)} ms` : "n/a"],
    ["camera reads per second", fmt(cam.reads_per_s, 1)],
    ["run", `${s.kind || "-"} ${s.phase || ""}${s.paused ? " (paused)" : ""}`],
    ["planning time", s.plan_time_s !== undefined ? `${fmt(s.plan_time_s)} s` : "n/a"],
    ["step time", s.step_time_s !== undefined ? `${fmt(s.step_time_s)} s` : "n/a"],
    ["telemetry", link.silent_s === null || link.silent_s === undefined ? "none yet" : `last ${fmt(link.silent_s, 1)} s ago`],
  ];
  if (a.error) rows.push(["controller error", a.error]);
  if (s.message) rows.push(["run message", s.message]);
  const body = $("status").tBodies[0];
  body.replaceChildren(...rows.map(([k, v]) => {
    const tr = document.createElement("tr");
    for (const text of [k, v]) { const td = document.createElement("td"); td.textContent = text; tr.appendChild(td); }
    return tr;
  }));
}

function renderProgress() {
  const e = state.episode, s = state.status, last = state.lastStep || {};
  const max = e.max_steps || 0;
  const done = s.step !== undefined ? s.step : (last.step !== undefined ? last.step + 1 : 0);
  $("episode-progress").firstElementChild.style.width = max ? `${(100 * Math.min(done, max)) / max}%` : "0";
  const bits = [`step ${done}${max ? " / " + max : ""}`];
  if (last.distance_m !== undefined && last.distance_m !== null) bits.push(`distance ${fmt(100 * last.distance_m, 1)} cm`);
  if (last.success) bits.push("success");
  if (s.stopped_by) bits.push(`ended: ${s.stopped_by}`);
  $("progress-info").textContent = bits.join(", ");
}

// --- controls -------------------------------------------------------------------------------

function say(text, ok) {
  const el = $("message");
  el.textContent = text;
  el.className = ok ? "ok" : "bad";
}

async function post(path, needsToken) {
  const headers = {};
  if (needsToken) headers["X-Control-Token"] = $("token").value.trim();
  try {
    const r = await fetch(path, { method: "POST", headers });
    const body = await r.json();
    if (body.arm) handlers.arm({ type: "arm", ...body.arm });
    return { ok: r.ok && body.ok, status: r.status, body };
  } catch (err) {
    return { ok: false, status: 0, body: { error: `dashboard unreachable (${err})` } };
  }
}

async function estop() {
  say("E-STOP sent...", false);
  const r = await post("/api/estop", false);
  say(r.ok ? "E-STOP latched on the controller" : `E-STOP FAILED: ${r.body.error || (r.body.arm && r.body.arm.error) || r.status}`, r.ok);
}

async function control(path, doing, done) {
  const needsToken = path !== "/api/pause";
  const r = await post(path, needsToken);
  if (r.status === 403) say(`refused: ${r.body.error}`, false);
  else say(r.ok ? done : `${doing} failed: ${r.body.error || (r.body.arm && r.body.arm.error) || r.status}`, r.ok);
}

$("estop").addEventListener("click", estop);
$("reset-estop").addEventListener("click", () => control("/api/reset_estop", "reset", "e-stop reset"));
$("pause").addEventListener("click", () => control("/api/pause", "pause", "run paused"));
$("resume").addEventListener("click", () => control("/api/resume", "resume", "run resumed"));
$("hold").addEventListener("change", renderPlan);
document.addEventListener("keydown", (ev) => { if (ev.key === "Escape") estop(); });
$("token").value = sessionStorage.getItem("controlToken") || "";
$("token").addEventListener("change", () => sessionStorage.setItem("controlToken", $("token").value.trim()));

// --- the websocket ---------------------------------------------------------------------------

let retryMs = 250;
function connect() {
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  ws.onopen = () => { retryMs = 250; };
  ws.onmessage = (ev) => {
    const u = JSON.parse(ev.data);
    if (u.run && u.run !== state.run) newRun(u.run);
    const handle = handlers[u.type];
    if (handle) handle(u);
  };
  ws.onclose = () => {
    const el = $("link");
    el.textContent = "dashboard lost, reconnecting";
    el.className = "pill bad";
    setTimeout(connect, retryMs);
    retryMs = Math.min(4000, retryMs * 2);
  };
}
connect();
renderStatus();
