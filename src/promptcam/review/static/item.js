// The image page: heatmap crossfade, other classes' maps, review keys. Plain JS, no build step.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("page-data").textContent);
  const $ = (id) => document.getElementById(id);
  const overlay = $("overlay");
  const opacity = $("opacity");
  const show = $("show-heatmap");
  const picker = $("picker");
  const search = $("class-search");
  const options = $("class-options");
  const message = $("message");
  let choice = 0;

  function itemUrl(id) { return "/item/" + id + (data.query ? "?" + data.query : ""); }
  function go(id) { if (id) { window.location.href = itemUrl(id); } }
  function say(text, bad) { message.textContent = text; message.className = "message" + (bad ? " bad" : ""); }

  // heatmap: the overlay file is already blended, so it crossfades over the photo by opacity
  function applyOpacity() {
    if (!overlay) { return; }
    overlay.style.opacity = show && show.checked ? String(opacity.value / 100) : "0";
  }
  if (overlay) {
    opacity.addEventListener("input", applyOpacity);
    show.addEventListener("change", applyOpacity);
    applyOpacity();
  }
  const explain = $("explain-class");
  if (explain) {
    const original = overlay.getAttribute("src");
    explain.addEventListener("change", function () {
      const index = explain.value;
      if (index === "") {
        if (original) { overlay.src = original; } else { overlay.hidden = true; }
        return;
      }
      say("computing the heatmap of " + data.classes[Number(index)] + "…");
      overlay.hidden = false;
      overlay.onload = function () { say("heatmap of " + data.classes[Number(index)]); };
      overlay.onerror = function () { say("could not compute that heatmap", true); };
      overlay.src = "/explain/" + data.id + "/" + index;
      show.checked = true;
      applyOpacity();
    });
  }

  // detection boxes ([x, y, w, h] in 0..1 of the photo)
  const stage = $("stage");
  data.boxes.forEach(function (b) {
    const box = document.createElement("div");
    box.className = "box";
    box.style.left = (b[0] * 100) + "%";
    box.style.top = (b[1] * 100) + "%";
    box.style.width = (b[2] * 100) + "%";
    box.style.height = (b[3] * 100) + "%";
    stage.appendChild(box);
  });

  function showVerdict(verdict, label) {
    const v = $("verdict");
    v.className = "verdict " + (verdict || "none");
    v.textContent = verdict === "confirmed" ? "confirmed: " + label
      : verdict === "corrected" ? "corrected to: " + label : "not reviewed";
  }

  async function send(method, body) {
    const response = await fetch("/api/review/" + data.id, {
      method: method,
      headers: body ? { "Content-Type": "application/json" } : {},
      body: body ? JSON.stringify(body) : undefined,
    });
    const answer = await response.json();
    if (!response.ok) { throw new Error(answer.error || ("HTTP " + response.status)); }
    return answer;
  }

  async function save(label) {
    try {
      const answer = await send("POST", { label: label });
      showVerdict(answer.verdict, answer.label);
      closePicker();
      say("saved");
      if (data.next) { go(data.next); }
    } catch (err) { say(err.message, true); }
  }

  async function undo() {
    try { await send("DELETE"); showVerdict(null, null); say("review removed"); }
    catch (err) { say(err.message, true); }
  }

  // the searchable class list
  function matches() {
    const q = search.value.trim().toLowerCase();
    return data.classes.filter((name) => name.toLowerCase().includes(q));
  }
  function renderOptions() {
    const found = matches();
    choice = Math.min(choice, Math.max(0, found.length - 1));
    options.replaceChildren();
    found.slice(0, 50).forEach(function (name, i) {
      const li = document.createElement("li");
      li.textContent = name;  // text, never markup: class names are user data
      li.setAttribute("role", "option");
      if (i === choice) { li.className = "chosen"; li.setAttribute("aria-selected", "true"); }
      li.addEventListener("click", function () { save(name); });
      options.appendChild(li);
    });
    return found;
  }
  function openPicker() {
    picker.hidden = false;
    search.value = "";
    choice = 0;
    renderOptions();
    search.focus();
  }
  function closePicker() { picker.hidden = true; }
  search.addEventListener("input", function () { choice = 0; renderOptions(); });
  search.addEventListener("keydown", function (event) {
    const found = matches();
    if (event.key === "ArrowDown") { choice = Math.min(choice + 1, found.length - 1); renderOptions(); }
    else if (event.key === "ArrowUp") { choice = Math.max(choice - 1, 0); renderOptions(); }
    else if (event.key === "Enter") { if (found.length) { save(found[choice]); } else { say("no class matches", true); } }
    else if (event.key === "Escape") { closePicker(); }
    else { return; }
    event.preventDefault();
    event.stopPropagation();
  });

  $("confirm").addEventListener("click", function () { save(data.predicted); });
  $("wrong").addEventListener("click", openPicker);
  $("undo").addEventListener("click", undo);

  document.addEventListener("keydown", function (event) {
    if (event.altKey || event.ctrlKey || event.metaKey) { return; }
    const tag = (event.target.tagName || "").toLowerCase();
    if (tag === "input" || tag === "select" || tag === "textarea") { return; }
    const actions = {
      ArrowRight: () => go(data.next), ArrowLeft: () => go(data.previous), j: () => go(data.next),
      k: () => go(data.previous), c: () => { if (!$("confirm").disabled) { save(data.predicted); } },
      w: openPicker, u: undo,
      h: () => { if (show) { show.checked = !show.checked; applyOpacity(); } },
      Escape: () => { window.location.href = "/" + (data.query ? "?" + data.query : ""); },
    };
    if (actions[event.key]) { event.preventDefault(); actions[event.key](); }
  });
})();
