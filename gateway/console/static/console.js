// Gatehouse console: streams playground and side-by-side answers into the page.
// Written for this console (no library). Everything the server sends is written with
// textContent, never innerHTML, so model output cannot inject markup.
"use strict";

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function byId(id) { return document.getElementById(id); }

function reset(side) {
  byId("answer-" + side).textContent = "";
  const err = byId("error-" + side); err.hidden = true; err.textContent = "";
  byId("facts-" + side).hidden = true;
  byId("verdicts-" + side).replaceChildren();
  byId("grounding-" + side).replaceChildren();
  byId("status-" + side).textContent = "Running…";
}

function table(headers, rows) {
  const t = el("table"); const thead = el("thead"); const tr = el("tr");
  headers.forEach(h => { const th = el("th", h); th.scope = "col"; tr.appendChild(th); });
  thead.appendChild(tr); t.appendChild(thead);
  const tb = el("tbody");
  rows.forEach(r => { const row = el("tr"); r.forEach(c => row.appendChild(el("td", c))); tb.appendChild(row); });
  t.appendChild(tb); return t;
}

function fmtMs(v) { return (v === null || v === undefined) ? "–" : Number(v).toFixed(1) + " ms"; }

function onEvent(ev, state) {
  const side = ev.side;
  if (ev.type === "meta") {
    state[side] = ev.request_id;
    const link = byId("record-" + side);
    link.textContent = ev.request_id || "–";
    link.href = "/console/traffic/" + encodeURIComponent(ev.request_id || "");
    byId("target-" + side).textContent = (ev.target || "–") + " / " + (ev.variant || "–");
    byId("prompt-" + side).textContent = ev.prompt || "none";
    byId("policy-" + side).textContent = ev.policy || "none";
    byId("facts-" + side).hidden = false;
    byId("status-" + side).textContent = "Streaming… (HTTP " + ev.status + ")";
  } else if (ev.type === "delta") {
    byId("answer-" + side).appendChild(document.createTextNode(ev.text));
  } else if (ev.type === "finish") {
    byId("status-" + side).textContent = "Finished: " + ev.reason;
  } else if (ev.type === "error") {
    const err = byId("error-" + side);
    err.hidden = false;
    err.textContent = (ev.status ? "HTTP " + ev.status + ": " : "") + (ev.message || "error") + (ev.rule ? " (rule " + ev.rule + ", " + (ev.category || "") + ")" : "");
  } else if (ev.type === "done") {
    const r = ev;
    byId("facts-" + side).hidden = false;
    byId("latency-" + side).textContent = fmtMs(r.latency_ms) + (r.ttft_ms !== null && r.ttft_ms !== undefined ? " (first token " + fmtMs(r.ttft_ms) + ")" : "");
    byId("tokens-" + side).textContent = (r.prompt_tokens ?? "–") + " / " + (r.completion_tokens ?? "–");
    if (r.prompt_id) byId("prompt-" + side).textContent = r.prompt_id + "@" + r.prompt_version;
    if (r.policy_version) byId("policy-" + side).textContent = r.policy_version;
    const status = byId("status-" + side);
    status.textContent = "Done: HTTP " + r.status + (r.finish_reason ? ", " + r.finish_reason : "") + ".";
    const vbox = byId("verdicts-" + side);
    vbox.appendChild(el("h3", "Verdicts"));
    if (!r.verdicts || !r.verdicts.length) vbox.appendChild(el("p", "No guardrail check ran.", "muted"));
    else vbox.appendChild(table(["Direction", "Rule", "Check", "Category", "Score", "Action"],
      r.verdicts.map(v => [v.direction, v.rule, v.check, v.category, Number(v.score || 0).toFixed(3), v.action])));
    const gbox = byId("grounding-" + side);
    gbox.appendChild(el("h3", "Grounding passages"));
    const g = r.grounding;
    if (!g || !g.chunks || !g.chunks.length) gbox.appendChild(el("p", "Not grounded.", "muted"));
    else gbox.appendChild(table(["Passage", "Score", "Title"], g.chunks.map(c => [c.id, Number(c.score).toFixed(3), c.title || ""])));
  }
}

async function runStream(form) {
  const pair = form.dataset.stream === "pair";
  const sides = pair ? ["a", "b"] : ["a"];
  sides.forEach(reset);
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  const state = {};
  const prefer = byId("prefer-form");
  if (prefer) prefer.hidden = true;
  try {
    const resp = await fetch(form.action, {
      method: "POST", credentials: "same-origin",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams(new FormData(form)).toString(),
    });
    const ctype = resp.headers.get("content-type") || "";
    if (!ctype.startsWith("application/x-ndjson")) {
      // an error page: show its message
      const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
      const msg = doc.getElementById("error-message");
      sides.forEach(s => onEvent({ side: s, type: "error", status: resp.status, message: msg ? msg.textContent : resp.statusText }, state));
      sides.forEach(s => { byId("status-" + s).textContent = "Not run."; });
      return;
    }
    const reader = resp.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl); buf = buf.slice(nl + 1);
        if (line.trim()) onEvent(JSON.parse(line), state);
      }
    }
    if (prefer && state.a && state.b) {
      byId("id_a").value = state.a; byId("id_b").value = state.b; prefer.hidden = false;
    }
  } catch (e) {
    sides.forEach(s => onEvent({ side: s, type: "error", message: "The request failed: " + e }, state));
  } finally {
    button.disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const form = byId("run-form");
  if (form) form.addEventListener("submit", ev => { ev.preventDefault(); runStream(form); });
});
