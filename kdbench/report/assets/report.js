// kdbench report.html: sortable tables, filters, and accuracy curves drawn as SVG. No libraries.
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";

  // ------------------------------------------------------------------ sorting

  function sortKey(td, type) {
    var raw = td.getAttribute("data-value");
    if (type === "num") {
      var x = parseFloat(raw);
      return isNaN(x) ? null : x;
    }
    var s = (raw !== null ? raw : td.textContent).trim().toLowerCase();
    return s === "" || s === "—" ? null : s;
  }

  function sortTable(table, col) {
    var th = table.tHead.rows[0].cells[col];
    var type = th.getAttribute("data-type") || "text";
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (other) { other.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = sortKey(a.cells[col], type), y = sortKey(b.cells[col], type);
      var order = (+a.getAttribute("data-order")) - (+b.getAttribute("data-order"));
      if (x === null || y === null) { return x === y ? order : (x === null ? 1 : -1); }  // blanks last
      var c = x < y ? -1 : (x > y ? 1 : 0);
      return (ascending ? c : -c) || order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }

  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tBodies[0].rows, function (row, i) { row.setAttribute("data-order", i); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.tabIndex = 0;
      th.addEventListener("click", function () { sortTable(table, col); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortTable(table, col); }
      });
    });
  });

  // ------------------------------------------------------------------ filters

  Array.prototype.forEach.call(document.querySelectorAll(".filters"), function (box) {
    var table = document.getElementById(box.getAttribute("data-table"));
    var selects = box.querySelectorAll("select[data-filter]");
    var count = box.querySelector(".count");
    function apply() {
      var shown = 0, rows = table.tBodies[0].rows;
      Array.prototype.forEach.call(rows, function (row) {
        var keep = true;
        Array.prototype.forEach.call(selects, function (s) {
          if (s.value !== "" && row.getAttribute("data-" + s.getAttribute("data-filter")) !== s.value) { keep = false; }
        });
        row.hidden = !keep;
        if (keep) { shown += 1; }
      });
      count.textContent = shown === rows.length ? rows.length + " rows" : shown + " of " + rows.length + " rows";
    }
    Array.prototype.forEach.call(selects, function (s) { s.addEventListener("change", apply); });
    var reset = box.querySelector("button.reset");
    if (reset) {
      reset.addEventListener("click", function () {
        Array.prototype.forEach.call(selects, function (s) { s.value = ""; });
        apply();
      });
    }
    apply();
  });

  // ------------------------------------------------------------------ curves

  var source = document.getElementById("curves-data");
  if (!source) { return; }
  var data = JSON.parse(source.textContent);
  var hidden = {};
  var zoom = false;

  function el(name, attrs, parent) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (parent) { parent.appendChild(node); }
    return node;
  }

  function niceTicks(lo, hi, count) {
    var span = hi - lo || 1, step = Math.pow(10, Math.floor(Math.log10(span / count)));
    var err = span / count / step;
    step *= err >= 7.5 ? 10 : err >= 3.5 ? 5 : err >= 1.5 ? 2 : 1;
    var ticks = [];
    for (var t = Math.ceil(lo / step) * step; t <= hi + 1e-9; t += step) { ticks.push(+t.toFixed(10)); }
    return ticks;
  }

  function epochs(series) {
    if (series.epochs) { return series.epochs; }
    return series.mean.map(function (_, i) { return series.first + i; });
  }

  function draw(svg, pair) {
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    var W = 560, H = 320, m = { l: 46, r: 14, t: 12, b: 38 };
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    var shown = pair.series.filter(function (s) { return !hidden[s.variant]; });
    var last = 1, first = Infinity;
    pair.series.forEach(function (s) {
      var e = epochs(s);
      last = Math.max(last, e[e.length - 1]);
      first = Math.min(first, e[0]);
    });
    var x0 = zoom ? Math.max(first, Math.floor(last * 0.75)) : first;
    var lo = Infinity, hi = -Infinity;
    shown.forEach(function (s) {
      epochs(s).forEach(function (e, i) {
        if (e < x0) { return; }
        lo = Math.min(lo, s.min[i] === null ? s.mean[i] : s.min[i]);
        hi = Math.max(hi, s.max[i] === null ? s.mean[i] : s.max[i]);
      });
    });
    if (!isFinite(lo)) { lo = 0; hi = 100; }
    var pad = Math.max((hi - lo) * 0.06, 0.2);
    lo -= pad; hi += pad;
    var x = function (e) { return m.l + (e - x0) / Math.max(last - x0, 1) * (W - m.l - m.r); };
    var y = function (v) { return H - m.b - (v - lo) / (hi - lo) * (H - m.t - m.b); };

    var axis = el("g", { "class": "axis" }, svg);
    niceTicks(lo, hi, 5).forEach(function (t) {
      el("line", { "class": "gridline", x1: m.l, x2: W - m.r, y1: y(t), y2: y(t) }, axis);
      el("text", { x: m.l - 6, y: y(t) + 3.5, "text-anchor": "end" }, axis).textContent = t;
    });
    niceTicks(x0, last, 6).filter(function (t) { return t === Math.round(t); }).forEach(function (t) {
      el("line", { x1: x(t), x2: x(t), y1: H - m.b, y2: H - m.b + 4 }, axis);
      el("text", { x: x(t), y: H - m.b + 16, "text-anchor": "middle" }, axis).textContent = t;
    });
    el("line", { x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b }, axis);
    el("text", { x: (m.l + W - m.r) / 2, y: H - 4, "text-anchor": "middle" }, axis).textContent = "epoch";
    el("text", { x: 12, y: (m.t + H - m.b) / 2, "text-anchor": "middle",
                 transform: "rotate(-90 12 " + (m.t + H - m.b) / 2 + ")" }, axis).textContent = "test top-1 (%)";

    shown.forEach(function (s) {
      var style = data.styles[s.variant];
      var e = epochs(s), upper = [], lower = [], line = [];
      e.forEach(function (ep, i) {
        if (ep < x0) { return; }
        line.push(x(ep).toFixed(1) + "," + y(s.mean[i]).toFixed(1));
        if (s.min[i] !== null) {
          upper.push(x(ep).toFixed(1) + "," + y(s.max[i]).toFixed(1));
          lower.unshift(x(ep).toFixed(1) + "," + y(s.min[i]).toFixed(1));
        }
      });
      if (upper.length > 1) {
        el("polygon", { points: upper.concat(lower).join(" "), fill: style.color, "fill-opacity": 0.16 }, svg);
      }
      el("polyline", { points: line.join(" "), fill: "none", stroke: style.color, "stroke-width": 1.8,
                       "stroke-dasharray": style.dash, "stroke-linejoin": "round" }, svg);
    });

    // Hover: the value of every shown variant at the nearest epoch.
    var guide = el("line", { "class": "hover-line", y1: m.t, y2: H - m.b, visibility: "hidden" }, svg);
    var readout = el("g", { "class": "readout", visibility: "hidden" }, svg);
    var catcher = el("rect", { x: m.l, y: m.t, width: W - m.l - m.r, height: H - m.t - m.b, fill: "transparent" }, svg);
    catcher.addEventListener("mousemove", function (evt) {
      var box = svg.getBoundingClientRect();
      var px = (evt.clientX - box.left) / box.width * W;
      var epoch = Math.round(x0 + (px - m.l) / (W - m.l - m.r) * Math.max(last - x0, 1));
      var lines = [];
      shown.forEach(function (s) {
        var i = epochs(s).indexOf(epoch);
        if (i >= 0) { lines.push([s.variant, s.mean[i]]); }
      });
      if (!lines.length) { return; }
      lines.sort(function (a, b) { return b[1] - a[1]; });
      guide.setAttribute("x1", x(epoch)); guide.setAttribute("x2", x(epoch));
      guide.setAttribute("visibility", "visible");
      while (readout.firstChild) { readout.removeChild(readout.firstChild); }
      var bx = x(epoch) > W / 2 ? x(epoch) - 168 : x(epoch) + 8;
      el("rect", { x: bx, y: m.t + 2, width: 160, height: 16 + 14 * lines.length, rx: 4 }, readout);
      el("text", { x: bx + 8, y: m.t + 15, "font-weight": 600 }, readout).textContent = "epoch " + epoch;
      lines.forEach(function (l, k) {
        var t = el("text", { x: bx + 8, y: m.t + 29 + 14 * k, fill: data.styles[l[0]].color }, readout);
        t.textContent = l[1].toFixed(2) + "  " + l[0];
      });
      readout.setAttribute("visibility", "visible");
    });
    catcher.addEventListener("mouseleave", function () {
      guide.setAttribute("visibility", "hidden");
      readout.setAttribute("visibility", "hidden");
    });
  }

  function drawAll() {
    data.pairs.forEach(function (pair, i) { draw(document.getElementById("curve-" + i), pair); });
  }

  var legend = document.getElementById("curves-legend");
  data.variants.forEach(function (variant) {
    var style = data.styles[variant];
    var button = document.createElement("button");
    button.type = "button";
    button.setAttribute("aria-pressed", "true");
    var swatch = el("svg", { width: 26, height: 10 });
    el("line", { x1: 1, x2: 25, y1: 5, y2: 5, stroke: style.color, "stroke-width": 2.5,
                 "stroke-dasharray": style.dash }, swatch);
    button.appendChild(swatch);
    button.appendChild(document.createTextNode(variant));
    button.addEventListener("click", function () {
      hidden[variant] = !hidden[variant];
      button.setAttribute("aria-pressed", hidden[variant] ? "false" : "true");
      drawAll();
    });
    legend.appendChild(button);
  });
  var zoomBox = document.getElementById("curves-zoom");
  if (zoomBox) {
    zoomBox.addEventListener("change", function () { zoom = zoomBox.checked; drawAll(); });
    zoom = zoomBox.checked;
  }
  drawAll();
}());
