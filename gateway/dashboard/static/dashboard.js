// Draws the spend page's charts with plotly.js from the JSON the server put in #chart-data.
// Okabe-Ito colours: told apart with the common colour-vision deficiencies.
"use strict";
(function () {
  const PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"];
  const data = JSON.parse(document.getElementById("chart-data").textContent);
  const config = { displaylogo: false, responsive: true };
  // Money in dollars; energy in watt-hours (a day without an estimate is null: no bar, not a zero).
  const USD = { axis: { tickprefix: "$" }, hover: "$%{y:,.4f}" };
  const WH = { axis: { ticksuffix: " Wh" }, hover: "%{y:,.4g} Wh (estimated)" };
  function draw(id, series, unit) {
    const layout = {
      barmode: "stack",
      margin: { l: 56, r: 8, t: 8, b: 40 },
      legend: { orientation: "h", y: -0.2 },
      yaxis: Object.assign({ rangemode: "tozero" }, unit.axis),
      xaxis: { type: "date" },
      font: { family: "system-ui, sans-serif", size: 12 },
    };
    const traces = Object.keys(series).map(function (name, index) {
      return {
        type: "bar",
        name: name,
        x: data.days,
        y: series[name],
        marker: { color: PALETTE[index % PALETTE.length] },
        hovertemplate: "%{x}<br>" + name + ": " + unit.hover + "<extra></extra>",
      };
    });
    window.Plotly.newPlot(id, traces, layout, config);
  }
  draw("spend-chart", data.spend, USD);
  draw("saved-chart", data.saved, USD);
  draw("energy-chart", data.energy, WH);
})();
