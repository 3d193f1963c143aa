// Paging by event: one action labels every file of an event (one request). Plain JS, no build step.
"use strict";
(function () {
  const classes = new Set(JSON.parse(document.getElementById("page-data").textContent).classes);

  function show(article, answer) {
    const state = article.querySelector(".event-state");
    state.className = "event-state";
    article.classList.toggle("reviewed", Boolean(answer.label));
    article.classList.toggle("unreviewed", !answer.label);
    state.textContent = answer.label ? "reviewed: " + answer.label + " (" + answer.files + " files)" : "review removed";
    article.querySelectorAll("a.card").forEach(function (card) {
      const predicted = (card.querySelector(".cls") || {}).textContent;
      const verdict = !answer.label ? null : answer.label === predicted ? "confirmed" : "corrected";
      card.classList.remove("confirmed", "corrected", "unreviewed");
      card.classList.add(verdict || "unreviewed");
      const badge = card.querySelector(".badge");
      badge.hidden = !verdict;
      badge.className = "badge " + (verdict === "confirmed" ? "ok" : "fix");
      badge.textContent = verdict === "confirmed" ? "✓ confirmed" : verdict ? "→ " + answer.label : "";  // text only
    });
  }

  function fail(article, text) {
    const state = article.querySelector(".event-state");
    state.textContent = text;
    state.className = "event-state bad";
  }

  async function send(article, method, label) {
    try {
      const response = await fetch("/api/event/" + article.dataset.event, {
        method: method,
        headers: label === undefined ? {} : { "Content-Type": "application/json" },
        body: label === undefined ? undefined : JSON.stringify({ label: label }),
      });
      const answer = await response.json();
      if (!response.ok) { throw new Error(answer.error || ("HTTP " + response.status)); }
      show(article, answer);
    } catch (err) { fail(article, err.message); }
  }

  document.querySelectorAll("article.event").forEach(function (article) {
    const input = article.querySelector(".event-label");
    function apply() {
      const label = input.value.trim();
      if (!classes.has(label)) { fail(article, "pick one of the model's classes"); return; }
      send(article, "POST", label);
    }
    article.querySelector(".event-confirm").addEventListener("click", function () {
      send(article, "POST", article.dataset.verdict);
    });
    article.querySelector(".event-apply").addEventListener("click", apply);
    input.addEventListener("keydown", function (event) { if (event.key === "Enter") { event.preventDefault(); apply(); } });
    article.querySelector(".event-undo").addEventListener("click", function () { send(article, "DELETE"); });
  });
})();
