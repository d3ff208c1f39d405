// neuro-scan serve: the page. Views by the URL's hash: #reports, #report/PATH, #new, #jobs, #job/ID.
// Every number shown comes from the server (reports, events); this script only draws them.
"use strict";

const TOKEN = document.querySelector('meta[name="neuro-scan-token"]').content;
const $ = (id) => document.getElementById(id);
const LAYER = /^L(\d+)$/, PAIR = /^L(\d+)\+L(\d+)$/;

// -- talking to the server -------------------------------------------------------------------------

async function api(path, options = {}) {
  const headers = { "x-neuro-scan-token": TOKEN, ...(options.headers || {}) };
  const response = await fetch(path, { ...options, headers });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function post(path, body) {
  return api(path, { method: "POST", body: JSON.stringify(body), headers: { "content-type": "application/json" } });
}

function showProblem(error) {
  $("problem").textContent = error ? `error: ${error.message || error}` : "";
  $("problem").hidden = !error;
}

function text(value, digits = 3) {
  if (value === null || value === undefined) return "";
  return typeof value === "number" ? value.toFixed(digits) : String(value);
}

function cell(row, value, className) {
  const td = row.insertCell();
  if (value instanceof Node) td.append(value); else td.textContent = value;
  if (className) td.className = className;
  return td;
}

function link(href, label) {
  const a = document.createElement("a");
  a.href = href;
  a.textContent = label;
  return a;
}

function filesUrl(path) {
  return "/files/" + path.split("/").map(encodeURIComponent).join("/");
}

// -- views -------------------------------------------------------------------------------------------

let leaveView = () => {};

async function route() {
  leaveView();
  leaveView = () => {};
  showProblem(null);
  const [view, ...rest] = (location.hash.slice(1) || "reports").split("/");
  const argument = decodeURIComponent(rest.join("/"));
  document.querySelectorAll(".view").forEach((section) => { section.hidden = section.id !== `view-${view}`; });
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("current", a.dataset.view === view));
  try {
    await ({ reports: showReports, report: showReport, new: showForm, jobs: showJobs, job: showJob }[view] || showReports)(argument);
  } catch (error) {
    showProblem(error);
  }
}

// Reports: the list, compare, one report.

async function showReports() {
  const reports = await api("/api/reports");
  const body = $("report-table").tBodies[0];
  body.replaceChildren();
  const chosen = new Set();
  for (const report of reports) {
    const row = body.insertRow();
    const box = document.createElement("input");
    box.type = "checkbox";
    box.dataset.path = report.path;
    box.onchange = () => {
      box.checked ? chosen.add(report.path) : chosen.delete(report.path);
      $("compare").disabled = chosen.size < 2;
    };
    cell(row, box);
    cell(row, link(`#report/${encodeURIComponent(report.path)}`, report.model || "(several models)"));
    cell(row, report.probe || "");
    cell(row, report.command);
    cell(row, (report.created_at || "").replace("T", " ").slice(0, 19));
    cell(row, text(report.baseline_score), "num");
    cell(row, text(report.baseline_accuracy), "num");
    cell(row, report.top_layers.slice(0, 5).map((top) => `L${top.layer}` + (top.label ? ` ${top.label}` : "")).join(", "));
    cell(row, report.path, "hint");
  }
  $("compare").disabled = true;
  $("compare").onclick = async () => {
    try {
      const job = await post("/api/jobs", { command: "compare", options: { reports: [...chosen] } });
      location.hash = `#job/${job.id}`;
    } catch (error) { showProblem(error); }
  };
}

async function showReport(path) {
  const report = await api(`/api/report?path=${encodeURIComponent(path)}`);
  $("report-title").textContent = `${report.model || "comparison"} · ${report.probe || ""} · ${report.command}`;
  const frame = $("report-frame");
  frame.hidden = !report.dashboard;
  $("report-tab").href = filesUrl(report.dashboard || report.path);
  $("report-chart").hidden = Boolean(report.dashboard);
  if (report.dashboard) {
    frame.src = filesUrl(report.dashboard);
  } else if (report.rows.length) {  // a fetched or reference report: its profile, drawn here
    drawBars($("report-chart"), report.rows.map((row) => row.layer), report.rows.map((row) => row.score_delta),
             report.rows.map((row) => row.ci), "Damage when each layer is skipped (nats)");
  }
}

// New scan: the form of each scanning command, built from the server's description.

let catalogue = null;

async function showForm() {
  catalogue = catalogue || await api("/api/commands");
  const command = $("scan-command");
  if (!command.options.length) {
    for (const spec of catalogue.commands) command.add(new Option(spec.name, spec.name));
    $("scan-probe").add(new Option("(default: math)", ""));
    for (const probe of catalogue.probes) $("scan-probe").add(new Option(`${probe.name} (${probe.samples} samples, ${probe.group})`, probe.name));
    for (const model of catalogue.models) $("models").append(new Option(model));
    command.onchange = drawOptions;
    $("scan-probe-file").onchange = checkProbeFile;
    $("scan-form").onsubmit = startScan;
  }
  drawOptions();
}

function currentSpec() {
  return catalogue.commands.find((spec) => spec.name === $("scan-command").value);
}

function drawOptions() {
  const spec = currentSpec();
  $("scan-help").textContent = spec.help;
  $("probe-row").hidden = !spec.probe_file;
  const box = $("scan-options");
  box.replaceChildren();
  for (const option of spec.options) {
    if (option.name === "model" || option.name === "probe") continue;
    const label = document.createElement("label");
    label.title = option.help;
    const input = document.createElement("input");
    input.name = option.name;
    input.dataset.type = option.type;
    if (option.type === "bool") { input.type = "checkbox"; input.checked = Boolean(option.default); }
    else {
      input.type = option.type === "str" ? "text" : "number";
      if (option.type === "float") input.step = "any";
      input.value = option.default === null ? "" : option.default;
      input.placeholder = option.optional ? "(not set)" : "";
    }
    label.append(`${option.flag} `, input);
    box.append(label);
  }
}

let probeUpload = null;

async function checkProbeFile() {
  const file = $("scan-probe-file").files[0];
  probeUpload = null;
  $("probe-check").textContent = "";
  if (!file) return;
  try {
    const checked = await api(`/api/probe-check?name=${encodeURIComponent(file.name)}`,
                              { method: "POST", body: file, headers: { "content-type": "application/octet-stream" } });
    probeUpload = { name: file.name, text: await file.text() };
    $("scan-probe").value = "";
    $("probe-check").textContent = `${checked.name}: ${checked.samples} samples, ${checked.answer_type}`;
    showProblem(null);
  } catch (error) {
    $("scan-probe-file").value = "";
    showProblem(error);
  }
}

async function startScan(event) {
  event.preventDefault();
  const spec = currentSpec();
  const options = { model: $("scan-model").value };
  if (spec.probe_file && $("scan-probe").value) options.probe = $("scan-probe").value;
  for (const input of $("scan-options").querySelectorAll("input")) {
    if (input.dataset.type === "bool") options[input.name] = input.checked;
    else options[input.name] = input.value === "" ? null : input.value;
  }
  try {
    const job = await post("/api/jobs", { command: spec.name, options, probe_file: spec.probe_file ? probeUpload : null });
    location.hash = `#job/${job.id}`;
  } catch (error) { showProblem(error); }
}

// Jobs: the list.

async function showJobs() {
  const draw = async () => {
    const jobs = await api("/api/jobs");
    const body = $("job-table").tBodies[0];
    body.replaceChildren();
    for (const job of jobs) {
      const row = body.insertRow();
      cell(row, link(`#job/${job.id}`, job.title));
      const state = document.createElement("span");
      state.className = `state ${job.state}`;
      state.textContent = job.state;
      cell(row, state);
      cell(row, job.device || "", "hint");
      cell(row, (job.started_at || "").replace("T", " "));
      cell(row, (job.ended_at || "").replace("T", " "));
      cell(row, job.message || "", "hint");
      cell(row, job.resumable ? resumeButton(job.id) : "");
    }
  };
  await draw();
  const timer = setInterval(() => draw().catch(showProblem), 2000);
  leaveView = () => clearInterval(timer);
}

// Resume: an interrupted (cancelled, failed) job queued again in its folder, continuing from its journal.

function resumeButton(id) {
  const button = document.createElement("button");
  button.textContent = "Resume";
  button.className = "resume";
  button.onclick = () => resumeJob(id);
  return button;
}

async function resumeJob(id) {
  try {
    await post(`/api/jobs/${id}/resume`, {});
    if (location.hash === `#job/${id}`) await route(); else location.hash = `#job/${id}`;  // its events from the first
  } catch (error) { showProblem(error); }
}

// One job, live: its events as they arrive (a reload replays them from the first; a resumed job's
// go on after its first end).

async function showJob(id) {
  for (const element of ["job-charts", "job-log"]) $(element).replaceChildren();
  for (const element of ["job-title", "job-message", "job-phase", "job-eta"]) $(element).textContent = "";
  $("job-frame").hidden = true;
  $("job-frame").removeAttribute("src");
  $("job-progress").hidden = false;
  $("job-bar").value = 0;
  setState("");
  const job = await api(`/api/jobs/${id}`);
  $("job-title").textContent = job.title;
  setState(job.state);
  $("job-cancel").onclick = () => post(`/api/jobs/${id}/cancel`, {}).catch(showProblem);
  $("job-resume").onclick = () => resumeJob(id);
  const live = new LiveJob(id);
  const source = new EventSource(`/api/jobs/${id}/events`);
  source.onmessage = (message) => live.handle(JSON.parse(message.data));
  source.addEventListener("end", () => source.close());
  leaveView = () => source.close();
}

function setState(state) {
  $("job-state").textContent = state;
  $("job-state").className = `state ${state}`;
  $("job-cancel").hidden = !["queued", "running"].includes(state);
  $("job-resume").hidden = true;  // shown by LiveJob.ended when the server says the job can be resumed
}

class LiveJob {
  constructor(id) {
    this.id = id;
    this.phase = null;
    this.scored = {};  // phase -> Map(index -> ConfigurationScored)
    this.intervals = {};  // layer -> [low, high], from the report once written
    this.pending = new Set();
  }

  log(line, level) {
    const item = document.createElement("li");
    item.textContent = line;
    if (level) item.className = level;
    $("job-log").append(item);
  }

  handle(event) {
    const kind = event.event;
    if (kind === "Started") { setState("running"); this.log(`started (worker pid ${event.pid})`); }
    else if (kind === "PhaseStarted") {
      this.phase = { name: event.phase, total: event.total, done: 0, started: event.time, last: event.time };
      $("job-phase").textContent = event.description;
      this.progress();
      this.log(event.description);
    } else if (kind === "Advanced" && this.phase && this.phase.name === event.phase) {
      this.phase.done += event.units;
      this.phase.last = event.time;
      if (event.status) $("job-phase").textContent = `${event.phase}: ${event.status}`;
      this.progress();
    } else if (kind === "PhaseFinished") {
      this.log(`${event.phase} done in ${event.seconds.toFixed(1)} s`);
      if (this.phase && this.phase.name === event.phase) { this.phase.done = this.phase.total; this.progress(); }
    } else if (kind === "ConfigurationScored") {
      (this.scored[event.phase] = this.scored[event.phase] || new Map()).set(event.index, event);
      this.redraw(event.phase);
    } else if (kind === "Notice") {
      this.log(event.level === "warning" ? `warning: ${event.message}` : event.message, event.level);
    } else if (kind === "Saved") {
      this.readReport();
    } else if (kind === "Finished") {
      this.log(`wrote ${event.written.length} files`);
    } else if (kind === "Ended") {
      this.ended(event);
    } else if (kind === "Resumed") {
      this.log(event.message);
      setState("queued");
      this.phase = null;
      $("job-progress").hidden = false;
      $("job-message").textContent = "";
      $("job-frame").hidden = true;
    }
  }

  progress() {
    const phase = this.phase;
    $("job-bar").value = phase.total ? phase.done / phase.total : 0;
    const elapsed = phase.last - phase.started;
    const left = phase.done > 0 && phase.done < phase.total ? elapsed * (phase.total - phase.done) / phase.done : null;
    $("job-eta").textContent = left === null ? "" : `about ${Math.ceil(left)} s left in this phase`;
  }

  redraw(phase) {  // at most once per frame however fast the events come
    if (this.pending.has(phase)) return;
    this.pending.add(phase);
    requestAnimationFrame(() => { this.pending.delete(phase); this.draw(phase); });
  }

  chart(name) {
    let element = $(`chart-${name}`);
    if (!element) {
      element = document.createElement("div");
      element.id = `chart-${name}`;
      element.className = "chart";
      $("job-charts").append(element);
    }
    return element;
  }

  draw(phase) {
    const scored = [...this.scored[phase].values()].sort((a, b) => a.index - b.index);
    const element = this.chart(phase);
    element.dataset.points = scored.length;
    if (scored.every((event) => PAIR.test(event.label))) return drawPairs(element, scored, phase);
    const layers = scored.every((event) => LAYER.test(event.label));
    const x = scored.map((event) => layers ? Number(LAYER.exec(event.label)[1]) : event.label);
    const intervals = scored.map((event, i) => event.low !== undefined ? [event.low, event.high]
                                                                  : (layers ? this.intervals[x[i]] : null));
    drawBars(element, x, scored.map((event) => event.damage), intervals,
             `${phase}: damage when ${layers ? "each layer is" : "each is"} removed (nats) — ${scored.length} scored`);
  }

  async readReport() {  // what the run has written so far: the intervals, the lens
    let report;
    try { report = await api(`/api/jobs/${this.id}/report`); } catch (error) { return; }
    if (!report) return;  // none written yet, or none the page can read
    for (const row of report.ablation_results || []) if (row.score_delta_ci) this.intervals[row.layer_idx] = row.score_delta_ci;
    for (const phase of Object.keys(this.scored)) this.draw(phase);
    const trajectory = report.logit_lens_trajectory || [];
    if (trajectory.length && trajectory[0].length) {
      const element = this.chart("lens");
      element.dataset.points = trajectory.length;
      Plotly.react(element, [{
        type: "heatmap", colorscale: "Viridis", zmin: 0, zmax: 1, colorbar: { title: { text: "p(answer)" } },
        z: trajectory.map((sample) => sample.map((layer) => layer.target_token_prob)),
        x: trajectory[0].map((layer) => layer.layer_idx),
        hovertemplate: "layer %{x}<br>sample %{y}<br>p(answer) %{z:.3f}<extra></extra>",
      }], { title: { text: "Lens: p(answer) at each layer (x) for each sample (y)" },
            xaxis: { title: { text: "layer" }, ...layerTicks(trajectory[0].length) }, yaxis: { title: { text: "sample" } },
            margin: { t: 50 } }, { responsive: true });
    }
  }

  ended(event) {
    setState(event.state);
    $("job-progress").hidden = true;
    $("job-message").textContent = event.message || "";
    api(`/api/jobs/${this.id}`).then((job) => {  // as the server has it now: a replayed end may since have been resumed
      $("job-resume").hidden = !(job.resumable && $("job-state").textContent === job.state);
    }).catch(showProblem);
    for (const [phase, error] of Object.entries(event.failed_phases || {})) this.log(`the ${phase} phase failed: ${error}`, "warning");
    for (const note of event.notes || []) this.log(note);
    if (event.dashboard) {  // the dashboard the run wrote, from the job's own folder
      $("job-frame").src = filesUrl(`jobs/${this.id}/${event.dashboard}`);
      $("job-frame").hidden = false;
      this.log(`dashboard: jobs/${this.id}/${event.dashboard}`);
    }
  }
}

// -- charts --------------------------------------------------------------------------------------

function drawBars(element, x, values, intervals, title) {
  const withIntervals = intervals.every((interval) => interval);
  const bars = {
    type: "bar", x, y: values, marker: { color: values.map((v) => v >= 0 ? "#e45756" : "#4c78a8") },
    hovertemplate: "%{x}: %{y:.4f}<extra></extra>",
  };
  if (withIntervals) {
    bars.error_y = { type: "data", symmetric: false, array: intervals.map((iv, i) => iv[1] - values[i]),
                     arrayminus: intervals.map((iv, i) => values[i] - iv[0]) };
  }
  const layers = typeof x[0] === "number";
  Plotly.react(element, [bars], { title: { text: title }, margin: { t: 50 },
                                  xaxis: layers ? { title: { text: "layer" }, ...layerTicks(x.length) } : {},
                                  yaxis: { title: { text: "damage (nats)" } } }, { responsive: true });
}

function drawPairs(element, scored, phase) {
  const pairs = scored.map((event) => PAIR.exec(event.label).slice(1).map(Number));
  const size = Math.max(...pairs.flat()) + 1;
  const z = Array.from({ length: size }, () => Array(size).fill(null));
  pairs.forEach(([i, j], k) => { z[i][j] = z[j][i] = scored[k].damage; });
  Plotly.react(element, [{ type: "heatmap", z, colorscale: "Reds", colorbar: { title: { text: "nats" } },
                           hovertemplate: "L%{y} + L%{x}: %{z:.4f}<extra></extra>" }],
               { title: { text: `${phase}: damage with both layers skipped — ${scored.length} pairs scored` },
                 xaxis: { title: { text: "layer" }, ...layerTicks(size) },
                 yaxis: { title: { text: "layer" }, ...layerTicks(size) }, margin: { t: 50 } }, { responsive: true });
}

function layerTicks(count) {  // whole-number ticks, one per layer when few
  return { tickmode: "linear", tick0: 0, dtick: count <= 40 ? 1 : Math.max(1, Math.floor(count / 20)) };
}

window.addEventListener("hashchange", route);
route();
