// llmctx ui: live refresh (polling) and copy-as-JSON. Handwritten, no dependencies; loaded
// from the same origin under a strict Content-Security-Policy (no inline script anywhere).
(function () {
  "use strict";
  var POLL_MS = 1500;

  function openKeys(root) {
    var keys = {};
    root.querySelectorAll("details[data-key]").forEach(function (d) {
      keys[d.getAttribute("data-key")] = d.open;
    });
    return keys;
  }

  function restoreKeys(root, keys) {
    root.querySelectorAll("details[data-key]").forEach(function (d) {
      var k = d.getAttribute("data-key");
      if (Object.prototype.hasOwnProperty.call(keys, k)) d.open = keys[k];
    });
  }

  function setState(text, bad) {
    var el = document.getElementById("live-state");
    if (!el) return;
    el.textContent = text;
    el.classList.toggle("stale", !!bad);
  }

  function refreshCharts(version) {
    document.querySelectorAll("img[data-chart]").forEach(function (img) {
      var url = new URL(img.getAttribute("src"), location.href);
      url.searchParams.set("v", version);
      img.setAttribute("src", url.pathname + url.search);
    });
  }

  function startLive() {
    var main = document.getElementById("live");
    if (!main || !main.dataset.versionUrl) return;
    var busy = false;
    function tick() {
      if (busy || document.hidden) return;
      busy = true;
      fetch(main.dataset.versionUrl, { cache: "no-store", credentials: "same-origin" })
        .then(function (r) {
          if (!r.ok) throw new Error("HTTP " + r.status);
          return r.text();
        })
        .then(function (version) {
          version = version.trim();
          if (version === main.dataset.version) {
            setState("live");
            return null;
          }
          return fetch(location.href, {
            cache: "no-store",
            credentials: "same-origin",
            headers: { "X-LLMCTX-Partial": "1" },
          }).then(function (r) {
            if (!r.ok) throw new Error("HTTP " + r.status);
            var got = r.headers.get("X-LLMCTX-Version") || version;
            return r.text().then(function (html) {
              var keys = openKeys(main);
              main.innerHTML = html;
              restoreKeys(main, keys);
              main.dataset.version = got;
              refreshCharts(got);
              setState("live · updated " + new Date().toLocaleTimeString());
            });
          });
        })
        .catch(function () {
          setState("live: store unreachable, retrying", true);
        })
        .then(function () {
          busy = false;
        });
    }
    setInterval(tick, POLL_MS);
  }

  function copyText(text, done) {
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { fallback(text, done); });
    } else {
      fallback(text, done);
    }
  }

  function fallback(text, done) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "offscreen";
    document.body.appendChild(area);
    area.select();
    try { document.execCommand("copy"); } catch (e) { /* nothing more to try */ }
    document.body.removeChild(area);
    done();
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("button[data-copy]") : null;
    if (!button) return;
    var source = document.getElementById(button.getAttribute("data-copy"));
    if (!source) return;
    copyText(source.textContent, function () {
      var note = button.parentNode.querySelector(".copied");
      if (note) note.textContent = "copied";
      button.dataset.copied = "1";
    });
  });

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", startLive);
  } else {
    startLive();
  }
})();
