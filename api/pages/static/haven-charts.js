// Charts drawn with Observable Plot from the API's own tables (the page's tables, rendered on
// the server, hold the same figures for reading without JavaScript). A suppressed figure is
// never drawn as a number: it is marked "suppressed".
(function () {
  "use strict";
  var TIERS = ["very_high", "high", "moderate", "low", "unknown"];
  var TIER_LABEL = {very_high: "Very high", high: "High", moderate: "Moderate", low: "Low", unknown: "Unknown"};
  var TIER_COLOUR = ["#d5281b", "#ed8b00", "#ffb81c", "#768692", "#aeb7bd"];
  var SOURCE = {apc: "Hospital admissions", ae: "A&E", op: "Outpatients", gp_events: "GP record",
                gp_medications: "GP prescribing", community: "Community services", social_care: "Social care"};
  var STYLE = {fontSize: "14px", fontFamily: "Frutiger W01, Arial, sans-serif", color: "#212b32"};
  var SEX = {"1": "Male", "2": "Female", "9": "Not specified", "0": "Not known", unknown: "Unknown"};
  var CHANGE = {up: "Up", same: "Same", down: "Down", "new": "New", unknown: "Unknown"};

  function label(by, value) {
    if (by === "tier") return TIER_LABEL[value] || value;
    if (by === "sex") return SEX[value] || value;
    if (by === "tier_change") return CHANGE[value] || value;
    return value;
  }

  function width(figure) {
    return Math.min(Math.max(figure.clientWidth || 640, 320), 1100);
  }

  function areaChart(figure, table, by) {
    var cells = table.cells.map(function (c) {
      return {category: label(by, c[by]), count: c.count, suppressed: c.suppressed};
    });
    var shown = cells.filter(function (c) { return !c.suppressed; });
    var hidden = cells.filter(function (c) { return c.suppressed; });
    var longest = Math.max.apply(null, cells.map(function (c) { return String(c.category).length; }));
    return Plot.plot({
      style: STYLE, width: width(figure), marginLeft: Math.min(20 + 8 * longest, 320),
      height: 50 + 30 * cells.length,
      x: {label: "People", grid: true}, y: {label: null, domain: cells.map(function (c) { return c.category; })},
      marks: [
        Plot.barX(shown, {x: "count", y: "category", fill: "#005eb8"}),
        Plot.text(shown, {x: "count", y: "category", text: function (d) { return d.count.toLocaleString(); }, dx: 4, textAnchor: "start"}),
        Plot.text(hidden, {x: 0, y: "category", text: function () { return "suppressed"; }, dx: 4, textAnchor: "start", fill: "#4c6272", fontStyle: "italic"}),
        Plot.ruleX([0])
      ]
    });
  }

  function unitChart(figure, table, by, geography) {
    var units = table.margins[geography].map(function (u) { return u[geography]; });
    var shown = table.cells.filter(function (c) { return !c.suppressed; }).map(function (c) {
      return {unit: c[geography], tier: c[by], count: c.count};
    });
    var hiddenUnits = {};
    table.cells.forEach(function (c) { if (c.suppressed) hiddenUnits[c[geography]] = true; });
    var notes = Object.keys(hiddenUnits).map(function (u) { return {unit: u}; });
    var present = TIERS.filter(function (t) { return shown.some(function (c) { return c.tier === t; }); });
    return Plot.plot({
      style: STYLE, width: width(figure), marginLeft: 90, marginRight: 140,
      height: 60 + 30 * units.length,
      x: {label: "People", grid: true}, y: {label: null, domain: units},
      color: {legend: true, domain: present, range: present.map(function (t) { return TIER_COLOUR[TIERS.indexOf(t)]; }),
              tickFormat: function (t) { return TIER_LABEL[t] || t; }},
      marks: [
        Plot.barX(shown, {x: "count", y: "unit", fill: "tier", order: TIERS}),
        Plot.text(notes, {frameAnchor: "right", y: "unit", text: function () { return "some suppressed"; }, dx: 135, fill: "#4c6272", fontStyle: "italic", textAnchor: "end"}),
        Plot.ruleX([0])
      ]
    });
  }

  function drawAggregate(figure) {
    var by = figure.getAttribute("data-by");
    var geography = figure.getAttribute("data-geography");
    var url = "/aggregates?by=" + encodeURIComponent(by) + "&geography=" + encodeURIComponent(geography);
    fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (r) { if (!r.ok) throw new Error(String(r.status)); return r.json(); })
      .then(function (table) {
        var svg = geography === "area" ? areaChart(figure, table, by) : unitChart(figure, table, by, geography);
        figure.replaceChildren(svg);
      })
      .catch(function () { figure.textContent = ""; });
  }

  function drawTimeline(figure) {
    var source = document.getElementById("timeline-data");
    if (!source) return;
    var data = JSON.parse(source.textContent);
    var rows = [];
    var perMonth = data.months.map(function () { return 0; });
    data.sources.forEach(function (s) {
      data.counts[s].forEach(function (n, i) {
        if (n) { rows.push({month: data.months[i], source: SOURCE[s] || s, count: n}); perMonth[i] += n; }
      });
    });
    var most = Math.max.apply(null, perMonth);
    figure.replaceChildren(Plot.plot({
      style: STYLE, width: width(figure), height: 300, marginBottom: 60,
      x: {label: null, domain: data.months, tickRotate: -45},
      y: {label: "Records", grid: true, ticks: Math.min(most, 5), tickFormat: "d"},
      color: {legend: true, domain: data.sources.map(function (s) { return SOURCE[s] || s; })},
      marks: [Plot.barY(rows, {x: "month", y: "count", fill: "source"}), Plot.ruleY([0])]
    }));
  }

  function drawCalibration(figure) {
    var source = document.getElementById("calibration-data");
    if (!source) return;
    var points = JSON.parse(source.textContent).filter(function (p) {
      return p.predicted !== null && p.observed !== null;
    });
    if (!points.length) return;
    var top = 1.1 * Math.max.apply(null, points.map(function (p) { return Math.max(p.predicted, p.observed); }));
    figure.replaceChildren(Plot.plot({
      style: STYLE, width: Math.min(width(figure), 560), height: 420, grid: true,
      marginBottom: 45, marginLeft: 55,
      x: {label: "Mean predicted risk", domain: [0, top], tickFormat: "%"},
      y: {label: "Observed rate", domain: [0, top], tickFormat: "%"},
      marks: [
        Plot.line([[0, 0], [top, top]], {stroke: "#aeb7bd", strokeDasharray: "4,4", clip: true}),
        Plot.line(points, {x: "predicted", y: "observed", stroke: "#005eb8"}),
        Plot.dot(points, {x: "predicted", y: "observed", fill: "#005eb8", r: 4})
      ]
    }));
  }

  document.querySelectorAll("[data-aggregate]").forEach(drawAggregate);
  document.querySelectorAll("[data-chart=calibration]").forEach(drawCalibration);
  document.querySelectorAll("[data-chart=timeline]").forEach(drawTimeline);
})();
