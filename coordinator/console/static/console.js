// FedFace console: live fragments and deadline countdowns. Served by the coordinator itself (the CSP
// allows scripts from this origin only); every page works without it, only less live.
"use strict";
(function () {
  function format(seconds) {
    if (seconds >= 3600) return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min";
    if (seconds >= 60) return Math.floor(seconds / 60) + " min " + (seconds % 60) + " s";
    return seconds + " s";
  }

  function countdowns(root) {
    root.querySelectorAll("time.countdown").forEach(function (el) {
      var end = Date.parse(el.getAttribute("datetime"));
      if (isNaN(end)) return;
      var left = Math.round((end - Date.now()) / 1000);
      el.textContent = left > 0 ? format(left) + " left" : "deadline reached";
    });
  }

  function toLogin() {
    window.location.assign("/console/login?next=" + encodeURIComponent(window.location.pathname));
  }

  // Replace a container's content with its fragment every few seconds. A container with
  // data-reload-when reloads the whole page once its round reaches one of those states, so the
  // page's plots and tables show the finished round.
  function poll(el) {
    var url = el.getAttribute("data-poll");
    var every = parseInt(el.getAttribute("data-every") || "2000", 10);
    var finals = (el.getAttribute("data-reload-when") || "").split(" ").filter(Boolean);
    function tick() {
      fetch(url, { credentials: "same-origin", cache: "no-store", headers: { "Accept": "text/html" } })
        .then(function (r) {
          if (r.status === 401 || r.status === 403) { toLogin(); return null; }
          return r.ok ? r.text() : null;
        })
        .then(function (html) {
          if (html === null) return;
          el.innerHTML = html;
          countdowns(el);
          var state = el.querySelector("[data-state]");
          if (state && finals.indexOf(state.getAttribute("data-state")) >= 0) { window.location.reload(); }
        })
        .catch(function () { /* a network blip: the next tick tries again */ })
        .finally(function () { window.setTimeout(tick, every); });
    }
    window.setTimeout(tick, every);
  }

  function start() {
    document.querySelectorAll("[data-poll]").forEach(poll);
    countdowns(document);
    window.setInterval(function () { countdowns(document); }, 1000);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
