/* The staff dashboard's charts (api/routes/dashboard.py). The page allows no
 * inline script (its Content-Security-Policy): each chart's Chart.js
 * configuration is a JSON block, <script type="application/json" id=...>,
 * named by its canvas's data-config; this draws them once the page and the
 * vendored Chart.js (chart.umd.min.js) are loaded. */
(function () {
  "use strict";

  var PALETTE = ["#1f5fa8", "#e0802b", "#3a9a5b", "#b8404a", "#7b5ea7", "#8c6d3f"];

  function draw(canvas) {
    var block = document.getElementById(canvas.getAttribute("data-config"));
    if (block === null) {
      return;
    }
    var config = JSON.parse(block.textContent);
    config.data.datasets.forEach(function (dataset, index) {
      var colour = dataset.colour || PALETTE[index % PALETTE.length];
      delete dataset.colour;
      if (dataset.backgroundColor === undefined) {
        dataset.backgroundColor = colour;
      }
      if (dataset.borderColor === undefined) {
        dataset.borderColor = colour;
      }
    });
    // Drawn at once: the figures are read, not watched.
    config.options = Object.assign(
      { animation: false, responsive: true, maintainAspectRatio: false },
      config.options || {}
    );
    new window.Chart(canvas, config);
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("canvas[data-config]").forEach(draw);
  });
})();
