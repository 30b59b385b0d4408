// aioconductor dashboard: live counts, charts, panels and the job list (polls the JSON API),
// and the actions (one job on its page, many from the list).
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

  // The badge cell, as templates/badge.html draws it.
  function badgeCell(job) {
    const td = el("td", null, "badge");
    td.append(el("span", job.badge, "pill badge-" + job.badge));
    if (job.cancel_requested && !FINAL.includes(job.state)) {
      td.append(" ", el("span", "cancel requested", "pill cancel-requested"));
    }
    let reason = null;
    if (job.badge === "TRASHED") reason = job.trash_reason;
    else if (job.badge === "CANCELLED" || job.cancel_requested) reason = job.cancel_reason;
    if (reason) td.append(" ", el("span", reason, "reason"));
    return td;
  }

  // -- selection for the bulk actions ---------------------------------------------------------
  const picked = new Set();

  function showPicked() {
    const option = document.getElementById("bulk-selected");
    if (option) option.textContent = "the selected jobs (" + picked.size + ")";
    const all = document.getElementById("select-page");
    if (all) {
      const boxes = [...document.querySelectorAll("#jobs input.pick")];
      all.checked = boxes.length > 0 && boxes.every((box) => box.checked);
    }
  }

  function pickBox(id) {
    const box = el("input", null, "pick");
    box.type = "checkbox";
    box.value = id;
    box.checked = picked.has(id);
    return box;
  }

  function jobRow(job) {
    const tr = el("tr");
    tr.dataset.jobId = job.id;
    if (document.getElementById("bulk")) {
      const cell = el("td");
      cell.append(pickBox(job.id));
      tr.append(cell);
    }
    tr.append(badgeCell(job));
    const nameCell = el("td");
    const link = el("a", job.name);
    link.href = base + "/jobs/" + encodeURIComponent(job.id);
    nameCell.append(link);
    if (job.key) nameCell.append(" ", el("span", job.key, "mono muted"));
    tr.append(nameCell);
    tr.append(el("td", job.flow));
    tr.append(el("td", job.attempts + " / " + job.max_attempts));
    tr.append(el("td", job.priority));
    tr.append(el("td", job.owner || "", "mono muted"));
    tr.append(el("td", job.updated_at, "muted"));
    return tr;
  }

  function scheduleRow(s) {
    const tr = el("tr");
    tr.append(el("td", s.name), el("td", s.flow || "-"), el("td", s.when));
    tr.append(el("td", s.next_tick || "-"), el("td", s.last_tick || "-"));
    const last = el("td");
    if (s.last_job_id) {
      const link = el("a");
      link.href = base + "/jobs/" + encodeURIComponent(s.last_job_id);
      link.append(el("span", s.last_job_state, "pill state-" + s.last_job_state));
      last.append(link);
    } else if (s.last_tick) {
      last.append(el("span", "purged", "muted"));
    } else {
      last.textContent = "-";
    }
    tr.append(last, el("td", s.runners));
    return tr;
  }

  function emptyRow(columns, text) {
    const tr = el("tr", null, "empty");
    const td = el("td", text);
    td.colSpan = columns;
    tr.append(td);
    return tr;
  }

  // A chart as _views.py lays it out (templates/svg.html draws the same).
  const SVG = "http://www.w3.org/2000/svg";
  function drawSvg(svg, chart) {
    if (!svg) return;
    svg.setAttribute("width", chart.width);
    svg.setAttribute("height", chart.height);
    svg.setAttribute("viewBox", "0 0 " + chart.width + " " + chart.height);
    const nodes = [];
    for (const r of chart.rects) {
      const rect = document.createElementNS(SVG, "rect");
      rect.setAttribute("class", r.cls);
      for (const [attr, key] of [["x", "x"], ["y", "y"], ["width", "w"], ["height", "h"]]) {
        rect.setAttribute(attr, r[key]);
      }
      const title = document.createElementNS(SVG, "title");
      title.textContent = r.title;
      rect.append(title);
      nodes.push(rect);
    }
    for (const l of chart.labels) {
      const text = document.createElementNS(SVG, "text");
      text.setAttribute("x", l.x);
      text.setAttribute("y", l.y);
      text.setAttribute("text-anchor", l.anchor);
      text.textContent = l.text;
      nodes.push(text);
    }
    svg.replaceChildren(...nodes);
  }

  function setLink(id, query) {
    const link = document.getElementById(id);
    if (!link) return;
    link.hidden = !query;
    link.href = base + "/" + (query || "");
  }

  function fillTable(id, rows, columns, empty) {
    const body = document.getElementById(id);
    if (body) body.replaceChildren(...(rows.length ? rows : [emptyRow(columns, empty)]));
  }

  async function refreshIndex() {
    const query = document.getElementById("list").dataset.query || "";
    const url = base + "/api/summary" + query;
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
    fillTable("conductors", summary.conductors.map(conductorRow), 5, "no conductor is alive");
    document.getElementById("limit-count").textContent = summary.limits.length + " set";
    fillTable("limits", summary.limits.map(limitRow), 3, "no limit is set");
    document.getElementById("schedule-count").textContent = summary.schedules.length;
    fillTable("schedules", summary.schedules.map(scheduleRow), 7, "no schedule");
    drawSvg(document.getElementById("throughput"), summary.throughput);
    drawSvg(document.getElementById("depth"), summary.depth);
    document.getElementById("throughput-total").textContent = summary.throughput.total;
    for (const [ending, n] of Object.entries(summary.throughput.totals)) {
      const node = document.getElementById("total-" + ending);
      if (node) node.textContent = n;
    }
    document.getElementById("matching").textContent = summary.matching;
    const columns = document.getElementById("bulk") ? 8 : 7;
    fillTable("jobs", summary.jobs.map(jobRow), columns, "no job");
    setLink("page-newest", summary.links.newest);
    setLink("page-newer", summary.links.newer);
    setLink("page-older", summary.links.older);
    showPicked();
    drawBars();
  }

  function wireList() {
    const jobs = document.getElementById("jobs");
    if (!jobs || !document.getElementById("bulk")) return;
    jobs.addEventListener("change", (event) => {
      const box = event.target;
      if (!box.classList.contains("pick")) return;
      if (box.checked) picked.add(box.value);
      else picked.delete(box.value);
      showPicked();
    });
    document.getElementById("select-page").addEventListener("change", (event) => {
      for (const box of document.querySelectorAll("#jobs input.pick")) {
        box.checked = event.target.checked;
        if (box.checked) picked.add(box.value);
        else picked.delete(box.value);
      }
      showPicked();
    });
    const list = document.getElementById("list");
    const out = document.getElementById("bulk-result");
    const limit = Number(list.dataset.bulkLimit);
    const verbs = { cancel: "Cancel", trash: "Trash", repost: "Re-post" };
    const effects = {
      cancel: "Jobs nobody runs end CANCELLED; running ones are stopped and reverted.",
      trash: "Nothing they did is reverted.",
      repost: "Each is posted again as a new job, its headers kept.",
    };
    for (const button of document.querySelectorAll("button[data-bulk]")) {
      button.addEventListener("click", async () => {
        const action = button.dataset.bulk;
        const scope = document.getElementById("bulk-scope").value;
        let body;
        let question;
        if (scope === "selected") {
          if (!picked.size) {
            out.textContent = "select jobs first";
            return;
          }
          body = { ids: [...picked] };
          question = verbs[action] + " the " + picked.size + " selected jobs?";
        } else {
          const filter = JSON.parse(list.dataset.filter || "{}");
          const params = new URLSearchParams(filter).toString();
          const counted = await fetch(base + "/api/count" + (params ? "?" + params : ""), {
            headers: { Accept: "application/json" },
          });
          const count = (await counted.json()).count;
          body = { filter: filter };
          question = verbs[action] + " all " + count + " jobs matching the filter?";
          if (count > limit) question += " (the newest " + limit + " in this request)";
        }
        if (!window.confirm(question + " " + effects[action])) return;
        out.textContent = "working…";
        const response = await fetch(base + "/api/bulk/" + action, {
          method: "POST",
          headers: {
            "X-Aioconductor-Action": "1",
            "Content-Type": "application/json",
            Accept: "application/json",
          },
          body: JSON.stringify(body),
        });
        const answer = await response.json();
        if (!response.ok) {
          out.textContent = answer.error || "HTTP " + response.status;
          return;
        }
        const parts = Object.entries(answer.counts).map(([what, n]) => n + " " + what);
        out.textContent =
          verbs[action] + ": " + (parts.join(", ") || "no job") +
          (answer.more ? "; more match: run it again for the rest" : "");
        picked.clear();
        showPicked();
        await refreshIndex();
      });
    }
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
    if (body.dataset.page === "index") {
      wireList();
      poll(refreshIndex, 1000);
    }
    if (body.dataset.page === "job") {
      wireActions();
      poll(refreshJob, 1500);
    }
  });
})();
