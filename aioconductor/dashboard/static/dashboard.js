// aioconductor dashboard: live counts, conductors, limits and jobs (polls the JSON API).
// Untrusted text (job names, args, owners) is only ever set through textContent.
"use strict";

(function () {
  const body = document.body;
  const base = body.dataset.base || "";
  const STATES = ["SCHEDULED", "UNCLAIMED", "CLAIMED", "COMPLETE", "TRASHED"];
  const FINAL = ["COMPLETE", "TRASHED"];

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function setLive(ok) {
    const live = document.getElementById("live");
    if (live) live.classList.toggle("offline", !ok);
  }

  function drawBars() {
    for (const fill of document.querySelectorAll(".bar .fill")) {
      const running = Number(fill.dataset.running);
      const capacity = Number(fill.dataset.capacity);
      const share = capacity > 0 ? Math.min(1, running / capacity) : 0;
      fill.style.width = (share * 100).toFixed(1) + "%";
    }
  }

  function conductorRow(c) {
    const tr = el("tr");
    tr.append(el("td", c.name));
    const bar = el("span", null, "bar");
    const fill = el("span", null, "fill");
    fill.dataset.running = c.running === null ? "" : c.running;
    fill.dataset.capacity = c.capacity === null ? "" : c.capacity;
    bar.append(fill);
    const load = el("td");
    load.append(bar);
    tr.append(load);
    const show = (v) => (v === null ? "?" : v);
    tr.append(el("td", show(c.running) + " / " + show(c.capacity)));
    tr.append(el("td", c.heartbeat_age + " s ago"));
    tr.append(el("td", c.owner, "mono muted"));
    return tr;
  }

  function limitRow(l) {
    const tr = el("tr");
    tr.append(el("td", l.key));
    const bar = el("span", null, "bar");
    const fill = el("span", null, "fill");
    fill.dataset.running = l.claimed;
    fill.dataset.capacity = l.limit;
    bar.append(fill);
    const use = el("td");
    use.append(bar);
    tr.append(use);
    const count = el("td", l.claimed + " / " + l.limit);
    if (l.limit === 0) count.append(" ", el("span", "(paused)", "muted"));
    tr.append(count);
    return tr;
  }

  // The outcome cell, as templates/outcome.html draws it.
  function outcomeCell(job) {
    const td = el("td");
    if (job.outcome === "CANCELLED" || job.cancel_requested) {
      const cancelled = job.outcome === "CANCELLED";
      td.append(
        cancelled
          ? el("span", "CANCELLED", "pill outcome-CANCELLED")
          : el("span", "cancel requested", "pill cancel-requested")
      );
      if (job.cancel_reason) td.append(" ", el("span", job.cancel_reason, "reason"));
    } else {
      td.textContent = job.outcome || job.trash_reason || "";
    }
    return td;
  }

  function jobRow(job) {
    const tr = el("tr");
    const stateCell = el("td");
    stateCell.append(el("span", job.state, "pill state-" + job.state));
    tr.append(stateCell);
    const nameCell = el("td");
    const link = el("a", job.name);
    link.href = base + "/jobs/" + encodeURIComponent(job.id);
    nameCell.append(link);
    tr.append(nameCell);
    tr.append(el("td", job.flow));
    tr.append(el("td", job.attempts + " / " + job.max_attempts));
    tr.append(el("td", job.priority));
    tr.append(outcomeCell(job));
    tr.append(el("td", job.owner || "", "mono muted"));
    tr.append(el("td", job.updated_at, "muted"));
    return tr;
  }

  function emptyRow(columns, text) {
    const tr = el("tr", null, "empty");
    const td = el("td", text);
    td.colSpan = columns;
    tr.append(td);
    return tr;
  }

  async function refreshIndex() {
    const state = document.getElementById("counts").dataset.state;
    const url = base + "/api/summary" + (state ? "?state=" + encodeURIComponent(state) : "");
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error("HTTP " + response.status);
    const summary = await response.json();
    document.getElementById("count-ALL").textContent = summary.total;
    for (const s of STATES) {
      const node = document.getElementById("count-" + s);
      if (node) node.textContent = summary.counts[s];
    }
    document.getElementById("conductor-count").textContent =
      summary.conductors.length + " alive";
    const conductors = document.getElementById("conductors");
    conductors.replaceChildren(
      ...(summary.conductors.length
        ? summary.conductors.map(conductorRow)
        : [emptyRow(5, "no conductor is alive")])
    );
    const limits = document.getElementById("limits");
    if (limits) {
      document.getElementById("limit-count").textContent = summary.limits.length + " set";
      limits.replaceChildren(
        ...(summary.limits.length
          ? summary.limits.map(limitRow)
          : [emptyRow(3, "no limit is set")])
      );
    }
    const jobs = document.getElementById("jobs");
    jobs.replaceChildren(
      ...(summary.jobs.length ? summary.jobs.map(jobRow) : [emptyRow(8, "no job")])
    );
    drawBars();
  }

  async function refreshJob() {
    const section = document.getElementById("job");
    if (FINAL.includes(section.dataset.state)) return;
    const url = base + "/api/jobs/" + encodeURIComponent(section.dataset.jobId);
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error("HTTP " + response.status);
    const detail = await response.json();
    const attempts = String(detail.job.attempts);
    const flagged = String(detail.job.cancel_requested);
    if (
      detail.job.state !== section.dataset.state ||
      attempts !== section.dataset.attempts ||
      flagged !== section.dataset.cancelRequested
    ) {
      // Redrawn by the server: the page shows the new state, claim and task states.
      window.location.reload();
    }
  }

  function wireActions() {
    const out = document.getElementById("action-result");
    for (const button of document.querySelectorAll("button[data-action]")) {
      button.addEventListener("click", async () => {
        const section = document.getElementById("job");
        const action = button.dataset.action;
        const ask = {
          trash: "Trash this job now? Nothing it did is reverted.",
          cancel: "Cancel this job? Its owner stops it and reverts what it did.",
        }[action];
        if (ask && !window.confirm(ask)) return;
        const url = base + "/api/jobs/" + encodeURIComponent(section.dataset.jobId) + "/" + action;
        const response = await fetch(url, {
          method: "POST",
          headers: { "X-Aioconductor-Action": "1", Accept: "application/json" },
        });
        const answer = await response.json();
        if (!response.ok) {
          out.textContent = answer.error || "HTTP " + response.status;
          return;
        }
        if (action === "repost") {
          window.location.href = base + "/jobs/" + encodeURIComponent(answer.job.id);
        } else {
          window.location.reload();
        }
      });
    }
  }

  function poll(refresh, every) {
    const tick = async () => {
      try {
        await refresh();
        setLive(true);
      } catch (error) {
        setLive(false);
      }
      window.setTimeout(tick, every);
    };
    window.setTimeout(tick, every);
  }

  document.addEventListener("DOMContentLoaded", () => {
    drawBars();
    if (body.dataset.page === "index") poll(refreshIndex, 1000);
    if (body.dataset.page === "job") {
      wireActions();
      poll(refreshJob, 1500);
    }
  });
})();
