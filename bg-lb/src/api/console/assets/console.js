// bg-lb console: signs in with the remote API's token, follows the daemon's
// status through /console/events and sends actions to /console/cmd/CMD
// with the session's CSRF token. The token stays in this tab
// (sessionStorage); nothing is loaded from elsewhere.
"use strict";

const POOLS = ["blue", "green"];
const CHART_POINTS = 120;
const KEY = "bg-lb-console";

let session = null; // { token, role, csrf }
let generation = 0; // bumped on sign-in/out: an old event stream stops
const views = new Map(); // service name -> its DOM and history

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v === true) node.setAttribute(k, "");
    else if (v !== false && v !== undefined) node.setAttribute(k, v);
  }
  for (const c of children) if (c) node.append(c);
  return node;
}

function say(text, bad) {
  const m = $("message");
  m.textContent = text;
  m.classList.toggle("bad", !!bad);
}

// ---- signing in ----

async function signIn(token) {
  $("login-error").textContent = "";
  let r;
  try {
    r = await fetch("/console/session", { method: "POST", headers: { Authorization: "Bearer " + token } });
  } catch (e) {
    $("login-error").textContent = "cannot reach the daemon: " + e.message;
    return;
  }
  if (r.status === 401) {
    sessionStorage.removeItem(KEY);
    $("login-error").textContent = "This token is not accepted.";
    return;
  }
  const body = await r.json();
  if (!r.ok) {
    $("login-error").textContent = body.error || "sign-in failed (" + r.status + ")";
    return;
  }
  session = { token, role: body.role, csrf: body.csrf };
  sessionStorage.setItem(KEY, token);
  document.body.classList.toggle("read-only", session.role !== "admin");
  $("login").hidden = true;
  $("logout").hidden = false;
  $("who").textContent = session.role === "admin" ? "signed in: admin" : "signed in: read-only (no controls)";
  $("services").replaceChildren();
  views.clear();
  follow(++generation);
}

function signOut(why) {
  session = null;
  generation++;
  sessionStorage.removeItem(KEY);
  views.clear();
  $("services").replaceChildren();
  $("login").hidden = false;
  $("logout").hidden = true;
  $("who").textContent = "";
  $("stream").textContent = "";
  if (why) $("login-error").textContent = why;
}

// ---- the live status ----

async function follow(gen) {
  while (session && gen === generation) {
    try {
      const r = await fetch("/console/events", { headers: { Authorization: "Bearer " + session.token } });
      if (r.status === 401) return signOut("The token is no longer accepted.");
      const reader = r.body.getReader();
      const text = new TextDecoder();
      let buffered = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done || gen !== generation) break;
        buffered += text.decode(value, { stream: true });
        let end;
        while ((end = buffered.indexOf("\n\n")) >= 0) {
          const event = buffered.slice(0, end);
          buffered = buffered.slice(end + 2);
          for (const line of event.split("\n")) {
            if (line.startsWith("data: ")) onStatus(JSON.parse(line.slice(6)));
          }
        }
      }
      if (gen !== generation) return reader.cancel();
      $("stream").textContent = "live view interrupted: reconnecting";
    } catch (e) {
      $("stream").textContent = "live view interrupted (" + e.message + "): reconnecting";
    }
    await new Promise((done) => setTimeout(done, 1000));
  }
}

function onStatus({ at, reply }) {
  if (!reply.ok) {
    $("stream").textContent = "status: " + reply.error;
    return;
  }
  const counted = reply.flows_counted_secs_ago;
  $("stream").textContent =
    "live · open connections counted " + (counted == null ? "not yet" : counted.toFixed(1) + " s ago");
  for (const s of reply.services || []) {
    let view = views.get(s.name);
    if (!view) {
      view = build(s);
      views.set(s.name, view);
      $("services").append(view.root);
    }
    update(view, s, at);
  }
}

// ---- what ctl would refuse ----

const enabled = (s, pool) => s.backends.some((b) => b.pool === pool && b.enabled && b.weight > 0);
const share = (ratio, pool) => (pool === "blue" ? ratio[0] : ratio[1]);
const parseRatio = (text) => text.split(":").map(Number);
const downIn = (s, pool) => s.backends.find((b) => b.pool === pool && b.enabled && b.weight > 0 && b.health === "down");

function ratioRefusal(s, ratio) {
  for (const pool of POOLS) {
    const p = share(ratio, pool);
    if (p > 0 && !enabled(s, pool))
      return `ratio ${ratio.join(":")} gives ${pool} ${p}% but ${pool} has no enabled backend with weight > 0`;
  }
  return "";
}

function allToRefusal(s, pool, verb) {
  if (!enabled(s, pool)) return `${verb}: ${pool} has no enabled backend with weight > 0`;
  return "";
}

function promoteRefusal(s, pool) {
  const down = downIn(s, pool);
  if (down) return `not promoting ${pool}: backend ${down.address} is down`;
  return allToRefusal(s, pool, "promote " + pool);
}

function shiftRefusal(s, view) {
  if (s.shift && s.shift.outcome.state === "running") return "a shift is running: abort it first";
  const to = view.shiftTo.value;
  const down = downIn(s, to);
  if (down) return `a ${to} backend is down (${down.address}): the shift would be refused`;
  const steps = view.shiftSteps.value.split(",").map((x) => Number(x.trim()));
  if (!steps.length || steps.some((x, i) => !Number.isInteger(x) || x < 1 || x > 100 || (i && x <= steps[i - 1])))
    return "steps are increasing shares of 1..100, e.g. 10,50,100";
  if (!(Number(view.shiftInterval.value) > 0)) return "the interval is a number of seconds over 0";
  const rate = Number(view.shiftMaxError.value);
  if (!(rate >= 0 && rate <= 100)) return "the max error rate is a percentage, 0..100";
  return "";
}

// ---- actions ----

async function act(cmd, fields, what) {
  say(what + "…");
  let r;
  try {
    r = await fetch("/console/cmd/" + cmd, {
      method: "POST",
      headers: {
        Authorization: "Bearer " + session.token,
        "X-CSRF-Token": session.csrf,
        "Content-Type": "application/json",
      },
      body: JSON.stringify(fields),
    });
  } catch (e) {
    say(what + ": cannot reach the daemon: " + e.message, true);
    return false;
  }
  const reply = await r.json().catch(() => ({ error: "HTTP " + r.status }));
  if (r.ok) say(what + ": " + (reply.message || "done"));
  else say(what + " refused (" + r.status + "): " + reply.error, true);
  return r.ok;
}

// ---- one service's card ----

function build(s) {
  const name = s.name;
  const id = (what) => what + "-" + name;
  const admin = session.role === "admin";
  const view = { name, history: [], last: null, dirty: false };
  view.splitBlue = el("div", { class: "blue", id: id("split-blue") });
  view.splitGreen = el("div", { class: "green", id: id("split-green") });
  view.meta = el("div", { class: "meta", id: id("meta") });
  view.shiftBox = el("div", { class: "shift", id: id("shift"), hidden: true });
  view.shiftState = el("span", { id: id("shift-state") });
  view.shiftReason = el("span", { class: "reason", id: id("shift-reason") });
  view.shiftBox.append(view.shiftState, " ", view.shiftReason);
  view.deadline = el("div", { class: "meta", id: id("drain-deadline-state"), hidden: true });
  view.chart = el("canvas", { id: id("chart"), width: 600, height: 150, role: "img", "aria-label": "open connections per pool over time" });

  const root = el("section", { class: "card service", "data-service": name },
    el("h2", { text: name }), view.meta,
    el("div", { class: "split", "aria-hidden": "true" }, view.splitBlue, view.splitGreen));

  if (admin) {
    view.slider = el("input", {
      type: "range", min: 0, max: 100, step: 1, id: id("ratio"),
      "aria-label": "green share of new connections (blue on the left, green on the right)",
      oninput: () => { view.dirty = true; preview(view); },
    });
    view.sliderValue = el("output", { id: id("ratio-value"), for: id("ratio") });
    view.ratioWarning = el("p", { class: "warning", id: id("ratio-warning"), role: "alert" });
    view.confirm = el("button", { type: "button", class: "primary", id: id("confirm"), onclick: () => setRatio(view) }, "Set ratio");
    view.reset = el("button", { type: "button", id: id("reset"), onclick: () => { view.dirty = false; update(view, view.last); } }, "Reset");
    root.append(
      el("div", { class: "ratio-row" }, el("span", { class: "b", text: "Blue" }), view.slider,
        el("span", { text: "Green" }), view.sliderValue, view.confirm, view.reset),
      view.ratioWarning);

    view.buttons = {};
    const button = (key, label, run) => {
      view.buttons[key] = el("button", { type: "button", id: id(key), onclick: run }, label);
      return view.buttons[key];
    };
    // Empty: the service's drain_deadline applies (or none), as with ctl.
    view.drainDeadline = el("input", { id: id("drain-deadline"), type: "number", min: 1, placeholder: "service default" });
    const pooled = (p) => {
      const secs = Number(view.drainDeadline.value);
      return view.drainDeadline.value && secs > 0 ? { service: name, pool: p, deadline_secs: Math.ceil(secs) } : { service: name, pool: p };
    };
    root.append(el("div", { class: "actions" },
      ...POOLS.map((p) => button("drain-" + p, "Drain " + p, () => act("drain", pooled(p), "drain " + p))),
      ...POOLS.map((p) => button("promote-" + p, "Promote " + p, () => act("promote", pooled(p), "promote " + p))),
      el("label", {}, "reset leftovers after (s)", view.drainDeadline),
      button("rollback", "Roll back", () => act("rollback", { service: name }, "rollback")),
      button("shift-abort", "Abort shift", () => act("shift-abort", { service: name }, "abort shift"))));
    view.actionWarning = el("p", { class: "warning", id: id("action-warning"), role: "alert" });

    view.shiftTo = el("select", { id: id("shift-to") }, ...POOLS.map((p) => el("option", { value: p, text: p })));
    view.shiftSteps = el("input", { id: id("shift-steps"), value: "10,25,50,100", inputmode: "numeric" });
    view.shiftInterval = el("input", { id: id("shift-interval"), type: "number", min: 1, value: 30 });
    view.shiftMaxError = el("input", { id: id("shift-max-error"), type: "number", min: 0, max: 100, step: "any", value: 1 });
    const field = (label, input) => el("label", {}, label, input);
    root.append(el("fieldset", {}, el("legend", { text: "Progressive shift" }),
      field("to", view.shiftTo), field("steps (% of the target)", view.shiftSteps),
      field("interval (s)", view.shiftInterval), field("max error rate (%)", view.shiftMaxError),
      button("shift-start", "Start shift", () => act("shift", {
        service: name, to: view.shiftTo.value,
        steps: view.shiftSteps.value.split(",").map((x) => Number(x.trim())),
        interval_secs: Number(view.shiftInterval.value),
        max_error_rate: Number(view.shiftMaxError.value) / 100,
      }, "shift to " + view.shiftTo.value))), view.actionWarning);
    for (const input of [view.shiftTo, view.shiftSteps, view.shiftInterval, view.shiftMaxError])
      input.addEventListener("input", () => view.last && update(view, view.last));
  }

  root.append(view.shiftBox, view.deadline);
  view.pools = {};
  const pools = el("div", { class: "pools" });
  for (const p of POOLS) {
    const body = el("tbody");
    const open = el("span", { id: id("open-" + p), text: "0" });
    pools.append(el("div", { class: "pool " + p },
      el("h3", {}, p + " · open connections ", open),
      el("div", { class: "table-wrap" }, el("table", {},
        el("thead", {}, el("tr", {}, ...["backend", "health (live/standby)", "weight", "enabled", "open", "new/s", "bytes/s"]
          .map((h) => el("th", { scope: "col", text: h })))), body))));
    view.pools[p] = { body, open, rows: new Map() };
  }
  root.append(pools, view.chart,
    el("div", { class: "legend" }, "open connections: ", el("span", { class: "b", text: "■ blue" }), " ",
      el("span", { class: "g", text: "■ green" }), " (last " + CHART_POINTS / 2 + " s)"));
  view.root = root;
  return view;
}

function sliderRatio(view) {
  const green = Number(view.slider.value);
  return [100 - green, green];
}

function showSplit(view, ratio, label) {
  view.splitBlue.style.width = ratio[0] + "%";
  view.splitGreen.style.width = ratio[1] + "%";
  view.splitBlue.textContent = ratio[0] ? `blue ${ratio[0]}%` : "";
  view.splitGreen.textContent = ratio[1] ? `green ${ratio[1]}%${label}` : label;
}

function preview(view) {
  const ratio = sliderRatio(view);
  const text = ratio.join(":");
  view.sliderValue.value = text;
  view.slider.setAttribute("aria-valuetext", `blue ${ratio[0]}%, green ${ratio[1]}%`);
  const current = view.last ? view.last.ratio : text;
  showSplit(view, ratio, view.dirty && text !== current ? " (preview)" : "");
  const refusal = view.last ? ratioRefusal(view.last, ratio) : "";
  view.ratioWarning.textContent = refusal ? "ctl would refuse: " + refusal : "";
  view.confirm.disabled = !!refusal || text === current;
  view.confirm.textContent = text === current ? "Set ratio" : "Set ratio " + text;
}

async function setRatio(view) {
  const ratio = sliderRatio(view).join(":");
  if (await act("ratio", { service: view.name, ratio }, "ratio " + ratio)) view.dirty = false;
}

// Each VIP, with its family once the service has an IPv6 one (as `ctl
// status` shows them); `vip` and `standby_vip` from an older daemon.
function vipsText(s) {
  const listeners = s.listeners || [];
  if (listeners.length === 0) {
    return `VIP ${s.vip}` + (s.standby_vip ? ` · standby ${s.standby_vip}` : "");
  }
  const dual = listeners.some((l) => l.family === "ipv6");
  const shown = (l) => dual ? `${l.vip} (${l.family === "ipv6" ? "IPv6" : "IPv4"})` : l.vip;
  const live = listeners.filter((l) => !l.standby).map(shown);
  const standby = listeners.filter((l) => l.standby).map(shown);
  return `VIP ${live.join(", ")}` + (standby.length ? ` · standby ${standby.join(", ")}` : "");
}

function update(view, s, at) {
  const previous = view.last;
  view.last = s;
  view.meta.textContent = vipsText(s) +
    ` · ratio ${s.ratio}` + (s.effective_ratio !== s.ratio ? ` (in effect ${s.effective_ratio})` : "") +
    ` · ${s.forwarding} · ${s.protocol}`;
  if (view.slider) {
    if (!view.dirty) view.slider.value = parseRatio(s.ratio)[1];
    preview(view);
    const warnings = [];
    for (const p of POOLS) {
      const drain = allToRefusal(s, p === "blue" ? "green" : "blue", "drain " + p);
      view.buttons["drain-" + p].disabled = !!drain;
      const promote = promoteRefusal(s, p);
      view.buttons["promote-" + p].disabled = !!promote;
      for (const w of [drain, promote]) if (w) warnings.push(w);
    }
    const shift = shiftRefusal(s, view);
    view.buttons["shift-start"].disabled = !!shift;
    if (shift && !(s.shift && s.shift.outcome.state === "running")) warnings.push("shift: " + shift);
    view.buttons["shift-abort"].disabled = !(s.shift && s.shift.outcome.state === "running");
    view.actionWarning.textContent = warnings.length ? "ctl would refuse: " + warnings.join("; ") : "";
  } else {
    showSplit(view, parseRatio(s.ratio), "");
  }
  showShift(view, s.shift);
  showDeadline(view, s.drain_deadline);
  if (at === undefined) return;

  const dt = view.at === undefined ? 0 : at - view.at;
  view.at = at;
  for (const p of POOLS) {
    const pool = view.pools[p];
    let open = 0;
    const seen = new Set();
    for (const b of s.backends.filter((x) => x.pool === p)) {
      seen.add(b.address);
      open += b.open_flows;
      let row = pool.rows.get(b.address);
      if (!row) {
        row = el("tr", { "data-backend": b.address });
        pool.rows.set(b.address, row);
        pool.body.append(row);
      }
      const before = previous && previous.backends.find((x) => x.address === b.address);
      const rate = (now, then) => (dt > 0 && then !== undefined && now >= then ? (now - then) / dt : null);
      const conns = before ? rate(b.new_flows, before.new_flows) : null;
      const bytes = before ? rate(b.bytes_in + b.bytes_out, before.bytes_in + before.bytes_out) : null;
      const health = el("td", {}, el("span", { class: b.health, text: b.health }),
        " / " + (b.standby_health || "–"));
      row.replaceChildren(
        el("td", { text: b.address + (b.added_at_runtime ? " (added)" : "") }), health,
        el("td", { text: String(b.weight) }), el("td", { text: b.enabled ? "yes" : "no" }),
        el("td", { class: "open", text: String(b.open_flows) }),
        el("td", { text: conns === null ? "…" : conns.toFixed(1) }),
        el("td", { text: bytes === null ? "…" : human(bytes) }));
    }
    for (const [address, row] of pool.rows) if (!seen.has(address)) { row.remove(); pool.rows.delete(address); }
    pool.open.textContent = String(open);
    view[p + "Open"] = open;
  }
  view.history.push([view.blueOpen, view.greenOpen]);
  if (view.history.length > CHART_POINTS) view.history.shift();
  draw(view);
}

function showShift(view, shift) {
  view.shiftBox.hidden = !shift;
  if (!shift) return;
  const o = shift.outcome;
  view.shiftBox.className = "shift " + o.state;
  const steps = shift.plan.steps;
  const step = `step ${shift.step + 1}/${steps.length} (${shift.plan.to} ${steps[shift.step]}%)`;
  const rates = POOLS.map((p, i) => {
    const r = shift.rates[i];
    return `${p} ${r.failures}/${r.new_flows} failed`;
  }).join(", ");
  const states = {
    running: `shift to ${shift.plan.to} running: ${step}; latest window ${rates}`,
    completed: `shift to ${shift.plan.to} completed`,
    "rolled-back": `shift to ${shift.plan.to} rolled back to ${shift.start_ratio} at ${step}:`,
    aborted: `shift to ${shift.plan.to} aborted` + (o.rolled_back ? ` (back to ${shift.start_ratio})` : " (ratio held)"),
  };
  view.shiftState.textContent = states[o.state] || o.state;
  view.shiftReason.textContent = o.reason || "";
}

function showDeadline(view, deadline) {
  view.deadline.hidden = !deadline;
  if (!deadline) return;
  const at = new Date(deadline.at_unix_ms).toLocaleTimeString();
  view.deadline.textContent = deadline.reset == null
    ? `drain deadline: ${deadline.pool}'s leftover connections are reset at ${at}`
    : `drain deadline passed at ${at}: ${deadline.reset} ${deadline.pool} connection(s) reset`;
}

function human(bytesPerSec) {
  const units = ["B", "KB", "MB", "GB"];
  let v = bytesPerSec;
  let u = 0;
  while (v >= 1000 && u < units.length - 1) { v /= 1000; u++; }
  return v.toFixed(v < 10 && u ? 1 : 0) + " " + units[u];
}

function draw(view) {
  const c = view.chart;
  const g = c.getContext("2d");
  const w = c.width;
  const h = c.height;
  g.clearRect(0, 0, w, h);
  const max = Math.max(1, ...view.history.flat());
  g.fillStyle = "#5b6270";
  g.font = "12px system-ui, sans-serif";
  g.fillText(String(max), 4, 12);
  g.strokeStyle = "#d4d7dd";
  g.beginPath(); g.moveTo(0, h - 1); g.lineTo(w, h - 1); g.stroke();
  const colors = ["#2563eb", "#16a34a"];
  for (let p = 0; p < 2; p++) {
    g.strokeStyle = colors[p];
    g.lineWidth = 2;
    g.beginPath();
    view.history.forEach((point, i) => {
      const x = (w * i) / (CHART_POINTS - 1);
      const y = h - 2 - ((h - 18) * point[p]) / max;
      if (i) g.lineTo(x, y); else g.moveTo(x, y);
    });
    g.stroke();
  }
}

// ---- start ----

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    signIn($("token").value.trim());
    $("token").value = "";
  });
  $("logout").addEventListener("click", () => signOut(""));
  const kept = sessionStorage.getItem(KEY);
  if (kept) signIn(kept);
});
