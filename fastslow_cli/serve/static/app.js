// fastslow's page: sliders re-run the search, heat maps toggle over thumbnails, a video's
// thumbnail plays it from its moment.
// Served by the app itself (no CDN) and inlined as is into `search --html` exports.
"use strict";

(function () {
  const form = document.getElementById("search-form");
  for (const [id, out, digits] of [["rerank", "rerank-value", 0], ["min-score", "min-score-value", 2]]) {
    const slider = document.getElementById(id);
    if (!slider) continue;
    slider.addEventListener("input", () => {
      document.getElementById(out).textContent = Number(slider.value).toFixed(digits);
    });
    slider.addEventListener("change", () => { if (document.getElementById("q").value.trim()) form.requestSubmit(); });
  }

  const viewer = document.getElementById("viewer");
  const player = document.getElementById("player");
  function play(card, time) {
    if (!player || !card.dataset.mediaUrl) return;  // the static export has no server to play from
    player.src = card.dataset.mediaUrl;
    player.addEventListener("loadedmetadata", () => {
      player.currentTime = time;
      player.play().catch(() => {});  // autoplay may be refused; the player shows the moment anyway
    }, { once: true });
    viewer.showModal();
  }
  if (viewer) viewer.addEventListener("close", () => { player.pause(); player.removeAttribute("src"); player.load(); });

  // Heat maps: the served page asks the API; the static export carries them inline (data-heatmaps).
  function heatmapSource(card, word) {
    if (card.dataset.heatmaps) return JSON.parse(card.dataset.heatmaps)[word];
    return card.dataset.heatmapUrl + (word === "" ? "" : "&token_index=" + encodeURIComponent(word));
  }
  for (const card of document.querySelectorAll(".result-card")) {
    const toggle = card.querySelector("button.heatmap-toggle");
    if (!toggle) continue;
    const overlay = card.querySelector("img.heatmap");
    const word = card.querySelector("select.heatmap-word");
    const show = () => {
      const on = toggle.getAttribute("aria-pressed") === "true";
      overlay.hidden = !on;
      if (on) overlay.src = heatmapSource(card, word.value);
    };
    toggle.addEventListener("click", () => {
      toggle.setAttribute("aria-pressed", String(toggle.getAttribute("aria-pressed") !== "true"));
      show();
    });
    word.addEventListener("change", show);
  }

  for (const card of document.querySelectorAll(".result-card[data-kind=video]")) {
    card.querySelector("img.thumb").addEventListener("click", () => play(card, Number(card.dataset.timestamp || 0)));
    for (const frame of card.querySelectorAll(".frames img")) {
      frame.addEventListener("click", () => play(card, Number(frame.dataset.time)));
    }
  }
})();
