// The playground: send one message to one or two adapters, show who answered, poll metrics.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const form = $("chat"), compare = $("compare"), modelB = $("model-b"), panelB = $("panel-b");

  compare.addEventListener("change", () => {
    modelB.disabled = !compare.checked;
    panelB.hidden = !compare.checked;
  });

  async function ask(model, side) {
    const out = $("answer-" + side), served = $("served-" + side), stats = $("stats-" + side);
    out.textContent = "…"; served.textContent = model; stats.textContent = "";
    out.dataset.state = "pending";
    const response = await fetch("/ui/api/chat", {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({model: model, message: $("message").value,
                            max_tokens: Number($("max-tokens").value) || 32}),
    });
    const data = await response.json().catch(() => ({error: {message: response.statusText}}));
    if (!response.ok) {
      out.textContent = "Error " + response.status + ": " + ((data.error || {}).message || "");
      out.dataset.state = "error";
      return;
    }
    out.textContent = data.answer;
    out.dataset.state = "done";
    served.textContent = data.served;
    const usage = data.usage || {};
    stats.textContent = "answered by " + data.served + " in " + data.seconds.toFixed(2) + " s, " +
      (usage.completion_tokens || 0) + " tokens (" + data.finish_reason + ")";
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const send = $("send");
    send.disabled = true;
    try {
      const jobs = [ask($("model-a").value, "a")];
      if (compare.checked) jobs.push(ask(modelB.value, "b"));
      await Promise.all(jobs);
    } finally {
      send.disabled = false;
      pollMetrics();
    }
  });

  function cell(row, text) {
    const td = document.createElement("td");
    td.textContent = text;
    row.appendChild(td);
  }
  const seconds = (s) => (s === null || s === undefined) ? "–" : (s * 1000).toFixed(0) + " ms";

  async function pollMetrics() {
    const status = $("metrics-status");
    try {
      const response = await fetch("/ui/api/metrics", {credentials: "same-origin"});
      if (response.status === 401) {  // signed out elsewhere: stop asking
        clearInterval(timer);
        status.textContent = "signed out: reload the page to sign in again";
        return;
      }
      if (!response.ok) { status.textContent = "metrics unavailable (" + response.status + ")"; return; }
      const rows = (await response.json()).adapters;
      const body = $("metrics");
      body.replaceChildren();
      for (const r of rows) {
        const tr = document.createElement("tr");
        cell(tr, r.adapter === "__base__" ? "base model" : r.adapter);
        const versions = Object.entries(r.versions || {}).map(([v, f]) =>
          "v" + v + ": " + f.requests + " req, " + f.errors + " err, TTFT " + seconds(f.ttft_mean_s));
        cell(tr, versions.join("; ") || "–");
        [r.requests, r.errors, r.prompt_tokens, r.completion_tokens].forEach((n) => cell(tr, String(n)));
        cell(tr, seconds(r.ttft_mean_s));
        cell(tr, seconds(r.latency_mean_s));
        body.appendChild(tr);
      }
      if (!rows.length) {
        const tr = document.createElement("tr");
        cell(tr, "No requests yet.");
        tr.firstChild.colSpan = 8;
        body.appendChild(tr);
      }
      status.textContent = "updated " + new Date().toLocaleTimeString();
    } catch (error) {
      status.textContent = "metrics unavailable";
    }
  }
  const timer = setInterval(pollMetrics, 2000);
  pollMetrics();
}());
