// Live updates for the dashboards: the page's data arrives as server-sent events and is
// written into the tables with textContent only (never innerHTML), so a value from a node or
// a client is always text. Forms carry the page's CSRF token.
"use strict";
(function () {
  const page = document.body.dataset.page;
  if (!page || page === "login") return;
  const csrf = (document.querySelector('meta[name="csrf"]') || {}).content || "";
  const base = document.body.dataset.events;  // each page names its event stream
  if (!base) return;
  const live = document.getElementById("live");

  function cell(c) {
    const td = document.createElement("td");
    if (c !== null && typeof c === "object") {
      if (c.form) {
        const form = document.createElement("form");
        form.method = "post";
        form.action = c.form;
        form.className = "inline";
        const hidden = document.createElement("input");
        hidden.type = "hidden";
        hidden.name = "csrf";
        hidden.value = csrf;
        form.appendChild(hidden);
        if (c.input) {
          const input = document.createElement("input");
          input.name = c.input;
          input.value = c.value || "";
          input.size = 8;
          form.appendChild(input);
        }
        const button = document.createElement("button");
        button.textContent = c.label;
        form.appendChild(button);
        td.appendChild(form);
      } else {
        td.textContent = c.text || "";
      }
    } else {
      td.textContent = c === null || c === undefined ? "" : String(c);
    }
    return td;
  }

  function fill(id, table) {
    const body = document.getElementById(id);
    if (!body) return;
    // Do not pull a form from under the user's cursor while they type in it.
    if (body.contains(document.activeElement) && document.activeElement.tagName === "INPUT") return;
    const rows = table.rows.map(function (row) {
      const tr = document.createElement("tr");
      row.forEach(function (c) { tr.appendChild(cell(c)); });
      return tr;
    });
    body.replaceChildren.apply(body, rows);
  }

  function chart(series) {
    const canvas = document.getElementById("chart");
    if (!canvas || !canvas.getContext) return;
    const g = canvas.getContext("2d");
    g.clearRect(0, 0, canvas.width, canvas.height);
    if (!series || series.length < 2) return;
    const top = Math.max(1, ...series.map(function (s) { return Math.max(s[1], s[2]); }));
    const t0 = series[0][0], t1 = series[series.length - 1][0];
    [[1, "#1971c2"], [2, "#e8590c"]].forEach(function (spec) {
      g.strokeStyle = spec[1];
      g.beginPath();
      series.forEach(function (s, i) {
        const x = ((s[0] - t0) / Math.max(1, t1 - t0)) * (canvas.width - 10) + 5;
        const y = canvas.height - 5 - (s[spec[0]] / top) * (canvas.height - 20);
        if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
      });
      g.stroke();
    });
    g.fillStyle = "#6b7785";
    g.fillText("max " + Math.round(top) + " B/s", 8, 12);
  }

  function apply(data) {
    Object.keys(data.tables || {}).forEach(function (id) { fill(id, data.tables[id]); });
    Object.keys(data.stats || {}).forEach(function (id) {
      const el = document.getElementById(id);
      if (el) el.textContent = data.stats[id];
    });
    if (data.series) chart(data.series);
    if (data.fields) {
      Object.keys(data.fields).forEach(function (id) {
        const el = document.getElementById(id);
        if (el) el.textContent = data.fields[id];
      });
    }
    document.body.dataset.updates = String(Number(document.body.dataset.updates || "0") + 1);
  }

  const source = new EventSource(base + page);
  source.onopen = function () { live.textContent = "live"; live.classList.add("on"); };
  source.onerror = function () { live.textContent = "reconnecting…"; live.classList.remove("on"); };
  source.onmessage = function (event) { apply(JSON.parse(event.data)); };
})();
