// The burn-down chart of a promotion's page: what of its budget is unspent over time, what each region spent,
// and the pacing plan, drawn with uPlot from /promotions/ID/burndown.json and read again every data-refresh-s.
(function () {
  "use strict";
  const COLOURS = ["#101828", "#1f5fbf", "#e04f16", "#067647", "#7a2e9e", "#b54708", "#0e9384"];

  function seriesOf(doc) {
    const last = doc.labels.length - 1;
    return [{}].concat(doc.labels.map(function (label, index) {
      const plan = index === last;
      return {
        label: label,
        stroke: plan ? "#98a2b3" : COLOURS[index % COLOURS.length],
        width: index === 0 ? 3 : 2,
        dash: plan ? [6, 4] : undefined,
        value: function (u, v) { return v == null ? "-" : Math.round(v).toLocaleString(); },
      };
    }));
  }

  function draw(element) {
    let chart = null;
    let shape = "";
    function load() {
      fetch(element.dataset.source, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (answer) { return answer.json().then(function (doc) { return [answer.ok, doc]; }); })
        .then(function ([ok, doc]) {
          if (!ok) { element.textContent = "The usage history could not be read: " + doc.error; return; }
          const key = doc.labels.join("|");
          if (chart && key === shape) { chart.setData(doc.data); return; }
          element.textContent = "";
          if (chart) { chart.destroy(); }
          shape = key;
          chart = new uPlot({
            width: element.clientWidth - 16,
            height: 300,
            series: seriesOf(doc),
            scales: { x: { time: true }, y: { range: [0, doc.budget] } },
            axes: [{}, { label: "units", size: 70 }],
          }, doc.data, element);
          element.dataset.drawn = String(doc.data[0].length);
          const note = document.createElement("p");
          note.className = "hint";
          note.textContent = "Plan: " + doc.plan + ". Budget " + doc.budget.toLocaleString() + ".";
          element.appendChild(note);
        })
        .catch(function (error) { element.textContent = "The usage history could not be read: " + error; });
    }
    load();
    setInterval(load, 1000 * Number(element.dataset.refreshS || 10));
  }

  document.addEventListener("DOMContentLoaded", function () {
    const element = document.getElementById("burndown");
    if (element) { draw(element); }
  });
})();
