// aimctl console: live updates from the controller's event stream, times in the reader's zone.
// Served from the package (the Content-Security-Policy allows no inline script).
(function () {
  "use strict";

  function localTimes(root) {
    root.querySelectorAll("time[data-ts]").forEach(function (t) {
      var ts = parseFloat(t.getAttribute("data-ts"));
      if (!isNaN(ts) && !t.hasAttribute("data-local")) {
        var d = new Date(ts * 1000);
        t.textContent = d.toLocaleString(undefined, {
          year: "numeric", month: "short", day: "2-digit",
          hour: "2-digit", minute: "2-digit", second: "2-digit"
        });
        t.title = d.toISOString();
        t.setAttribute("data-local", "1");
      }
    });
  }

  function connect(url) {
    var dot = document.getElementById("live-dot");
    var es = new EventSource(url);
    es.onopen = function () { if (dot) { dot.className = "live-dot on"; } };
    es.onerror = function () { if (dot) { dot.className = "live-dot off"; } };
    es.onmessage = function (e) {
      // Every live region re-fetches itself (hx-trigger="aimctl-change from:body").
      document.body.dispatchEvent(new CustomEvent("aimctl-change", { detail: e.data }));
    };
  }

  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    new MutationObserver(function () { localTimes(document); })
      .observe(document.body, { childList: true, subtree: true });
    var live = document.body.getAttribute("data-live");
    if (live && window.EventSource) { connect(live); }
  });
})();
