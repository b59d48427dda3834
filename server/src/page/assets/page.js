// DeployLite status page: live updates. Every page works without this script; with it,
// pages follow the change feed (/api/v1/events) and a running stage's log follows its tail.
(function () {
  "use strict";

  var MAX_LOG_LINES = 5000;

  // Reloads the page's <main> from the server (debounced): the server renders, this swaps.
  var refreshTimer = null;
  function refreshMain() {
    if (refreshTimer) return;
    refreshTimer = setTimeout(function () {
      refreshTimer = null;
      fetch(window.location.href, { credentials: "same-origin", headers: { Accept: "text/html" } })
        .then(function (response) { return response.ok ? response.text() : null; })
        .then(function (text) {
          if (!text) return;
          var fresh = new DOMParser().parseFromString(text, "text/html").getElementById("main");
          var main = document.getElementById("main");
          if (fresh && main) main.replaceChildren.apply(main, Array.prototype.slice.call(fresh.childNodes));
        })
        .catch(function () { /* the next change tries again */ });
    }, 300);
  }

  function followChanges(live) {
    if (!window.EventSource) return;
    var runId = live.indexOf("run:") === 0 ? Number(live.slice(4)) : null;
    var source = new EventSource("/api/v1/events");
    // Let the connection go with the page: a browser keeps few connections per host, and a
    // stream held by a page being left (or kept in the back/forward cache) would stall the next.
    window.addEventListener("pagehide", function () { source.close(); });
    source.addEventListener("open", function () { document.body.setAttribute("data-live-state", "open"); });
    function onChange(event) {
      var change;
      try { change = JSON.parse(event.data); } catch (e) { return; }
      if (runId === null || change.run_id === runId) refreshMain();
    }
    source.addEventListener("run", onChange);
    source.addEventListener("stage", onChange);
    // Deployments move pages that show environments (the home page, the environment pages).
    source.addEventListener("deployment", function () { if (runId === null) refreshMain(); });
    source.addEventListener("reset", refreshMain);
  }

  function followLog(log) {
    var src = log.getAttribute("data-live-src");
    if (!src || !window.EventSource) return;
    var source = new EventSource(src);
    window.addEventListener("pagehide", function () { source.close(); });
    source.addEventListener("open", function () { log.setAttribute("data-live-state", "open"); });
    source.addEventListener("lines", function (event) {
      var atBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 40;
      var holder = document.createElement("div");
      holder.innerHTML = event.data; // rendered and escaped by the server
      while (holder.firstChild) log.appendChild(holder.firstChild);
      while (log.children.length > MAX_LOG_LINES) log.removeChild(log.firstElementChild);
      if (atBottom) window.scrollTo(0, document.body.scrollHeight);
    });
    source.addEventListener("end", function () {
      source.close();
      var note = document.querySelector(".live-note");
      if (note) note.textContent = "The attempt has ended.";
    });
  }

  function timestampsToggle(log) {
    var link = document.querySelector(".ts-link");
    if (!link) return;
    link.addEventListener("click", function (event) {
      event.preventDefault();
      var hidden = log.classList.toggle("hide-ts");
      link.textContent = hidden ? "Show timestamps" : "Hide timestamps";
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var live = document.body.getAttribute("data-live");
    if (live) followChanges(live);
    var log = document.getElementById("log");
    if (log) {
      followLog(log);
      timestampsToggle(log);
    }
  });
})();
