/* importance-stream live dashboard: polls the worker's JSON API and draws with uPlot. */
(function () {
  "use strict";

  var REFRESH_MS = 1500;
  var HISTORY = 300; // one-second samples shown in the time series
  var TOP_K = 15;

  var query = new URLSearchParams(window.location.search);
  var token = query.get("token");
  var headers = token ? { Authorization: "Bearer " + token } : {};
  var windowName = query.get("window") || null;
  var refreshes = 0;

  function $(id) { return document.getElementById(id); }

  function getJSON(path) {
    return fetch(path, { headers: headers, cache: "no-store" }).then(function (r) {
      if (!r.ok) { throw new Error(path + ": HTTP " + r.status); }
      return r.json();
    });
  }

  function fmt(value, digits) {
    if (value === null || value === undefined || Number.isNaN(value)) { return "–"; }
    if (digits === undefined) {
      return Math.round(value).toLocaleString("en-US");
    }
    return Number(value).toFixed(digits);
  }

  function pct(value) {
    return value === null || value === undefined ? "–" : (100 * value).toFixed(1) + " %";
  }

  // -- charts ------------------------------------------------------------------------
  var charts = {};

  function chartSize(el) {
    return { width: Math.max(el.clientWidth, 300), height: 220 };
  }

  function makeChart(id, series, extra) {
    var el = $(id);
    var opts = Object.assign(
      {
        width: chartSize(el).width,
        height: chartSize(el).height,
        series: series,
        legend: { live: false },
        cursor: { drag: { x: false, y: false } },
      },
      extra || {}
    );
    var empty = series.map(function () { return []; });
    charts[id] = new uPlot(opts, empty, el);
    return charts[id];
  }

  function setData(id, data) {
    var chart = charts[id];
    chart.setData(data);
    var el = $(id);
    var points = data[0].length;
    el.dataset.points = String(points);
  }

  function buildCharts() {
    makeChart("chart-throughput", [
      {},
      { label: "events in", stroke: "#2f6fdd", width: 2 },
      { label: "scored", stroke: "#1d9a5b", width: 2 },
      { label: "DLQ", stroke: "#d8412f", width: 2 },
    ], { scales: { y: { range: function (u, min, max) { return [0, Math.max(1, max * 1.1)]; } } } });

    makeChart("chart-importance", [
      {},
      {
        label: "events",
        stroke: "#2f6fdd",
        fill: "rgba(47,111,221,0.35)",
        paths: uPlot.paths.bars({ size: [0.92, 60] }),
        points: { show: false },
      },
    ], {
      scales: { x: { time: false, range: [0, 1] }, y: { range: function (u, min, max) { return [0, Math.max(1, max * 1.1)]; } } },
      axes: [{ values: function (u, vals) { return vals.map(function (v) { return v.toFixed(1); }); } }, {}],
    });

    makeChart("chart-quality", [
      {},
      { label: "keep rate", stroke: "#8a4fd8", width: 2, scale: "rate" },
      { label: "AUC", stroke: "#e08a1e", width: 2, scale: "rate" },
    ], { scales: { rate: { range: [0, 1] } }, axes: [{}, { scale: "rate" }] });

    makeChart("chart-lag", [
      {},
      { label: "lag", stroke: "#5a6275", width: 2, fill: "rgba(90,98,117,0.12)" },
    ], { scales: { y: { range: function (u, min, max) { return [0, Math.max(10, max * 1.1)]; } } } });

    window.addEventListener("resize", function () {
      Object.keys(charts).forEach(function (id) { charts[id].setSize(chartSize($(id))); });
    });
  }

  // -- rendering -----------------------------------------------------------------------
  function renderStats(stats) {
    var rates = stats.rates || {};
    $("kpi-events-in").textContent = fmt(rates.events_in_per_s, 1);
    $("kpi-scored").textContent = fmt(rates.scored_per_s, 1);
    $("kpi-dlq").textContent = fmt(rates.dlq_per_s, 1);
    $("kpi-keep").textContent = pct(stats.keep_rate);
    $("kpi-auc").textContent = fmt(stats.progressive.auc, 3);
    $("kpi-logloss").textContent = fmt(stats.progressive.log_loss, 4);
    $("kpi-lag").textContent = fmt(stats.lag.total);
    $("kpi-updates").textContent = fmt(stats.model.updates);
    $("kpi-scored-total").textContent = fmt(stats.totals.scored);
    $("kpi-dlq-total").textContent = fmt(stats.totals.dlq);

    var h = stats.history || [];
    var t = h.map(function (s) { return s.t; });
    setData("chart-throughput", [
      t,
      h.map(function (s) { return s.events_in_per_s; }),
      h.map(function (s) { return s.scored_per_s; }),
      h.map(function (s) { return s.dlq_per_s; }),
    ]);
    setData("chart-quality", [
      t,
      h.map(function (s) { return s.keep_rate; }),
      h.map(function (s) { return s.auc; }),
    ]);
    setData("chart-lag", [t, h.map(function (s) { return s.lag; })]);

    var hist = stats.importance_histogram;
    var centers = [];
    for (var i = 0; i < hist.counts.length; i++) {
      centers.push((hist.edges[i] + hist.edges[i + 1]) / 2);
    }
    setData("chart-importance", [hist.n ? centers : [], hist.n ? hist.counts : []]);

    var select = $("window");
    var windows = Object.keys(stats.rolling.item.windows);
    if (select.options.length !== windows.length) {
      select.innerHTML = "";
      windows.forEach(function (name) {
        var opt = document.createElement("option");
        opt.value = name;
        opt.textContent = name;
        select.appendChild(opt);
      });
      if (!windowName || windows.indexOf(windowName) < 0) { windowName = windows[0]; }
      select.value = windowName;
    }
  }

  function renderTop(tableId, doc) {
    var body = $(tableId).querySelector("tbody");
    body.innerHTML = "";
    var rows = doc.top || [];
    if (!rows.length) {
      var tr = document.createElement("tr");
      var td = document.createElement("td");
      td.colSpan = 7;
      td.className = "empty";
      td.textContent = "no events in this window yet";
      tr.appendChild(td);
      body.appendChild(tr);
      return;
    }
    var best = rows[0].importance || 1;
    rows.forEach(function (row, i) {
      var tr = document.createElement("tr");
      var cells = [
        String(i + 1),
        String(row.id),
        null,
        fmt(row.events),
        fmt(row.mean_importance, 3),
        fmt(row.kept),
        fmt(row.p_mean, 3),
      ];
      cells.forEach(function (text, j) {
        var td = document.createElement("td");
        if (j === 2) {
          var bar = document.createElement("span");
          bar.className = "bar";
          bar.style.width = Math.round(60 * row.importance / best) + "px";
          td.appendChild(bar);
          td.appendChild(document.createTextNode(fmt(row.importance, 2)));
        } else {
          td.textContent = text;
        }
        if (j === 1) { td.title = text; }
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
  }

  function setStatus(kind, text) {
    var el = $("status");
    el.className = "status " + kind;
    el.textContent = text;
  }

  var recovery = null;

  /* "live" only when the worker processes events; while it restores its tables:
     "recovering" with the records left and Faust's estimate of the seconds left. */
  function recoveryText(rec) {
    if (!rec || rec.state === "live") return null;
    if (rec.state === "recovering") {
      var text = "recovering · " + fmt(rec.records_left) + " records left";
      if (rec.estimated_s !== null && rec.estimated_s !== undefined) {
        text += " · ~" + fmt(rec.estimated_s, 0) + " s";
      }
      return text;
    }
    return rec.state;
  }

  function refresh() {
    getJSON("/api/stats?history=" + HISTORY)
      .then(function (stats) {
        renderStats(stats);
        recovery = stats.recovery || null;
        var w = encodeURIComponent(windowName);
        return Promise.all([
          getJSON("/api/top/items?k=" + TOP_K + "&window=" + w),
          getJSON("/api/top/categories?k=" + TOP_K + "&window=" + w),
        ]);
      })
      .then(function (tops) {
        renderTop("top-items", tops[0]);
        renderTop("top-categories", tops[1]);
        document.querySelectorAll("[data-role=window-label]").forEach(function (el) {
          el.textContent = "· last " + windowName + " (event time)";
        });
        refreshes += 1;
        document.body.dataset.refreshes = String(refreshes);
        var waiting = recoveryText(recovery);
        if (waiting) {
          setStatus("wait", waiting + " · " + new Date().toLocaleTimeString());
        } else {
          setStatus("ok", "live · " + new Date().toLocaleTimeString());
        }
      })
      .catch(function (err) {
        setStatus("err", String(err.message || err));
      })
      .then(function () { window.setTimeout(refresh, REFRESH_MS); });
  }

  $("window").addEventListener("change", function (e) {
    windowName = e.target.value;
    refresh();
  });

  buildCharts();
  refresh();
})();
