// The steering and variant pages: send the form to the JSON API, show any 4xx message in place,
// and draw the answer: Δ log p on the sequence, as a heatmap and on a stored structure (steer);
// a table of variants and, per variant, mutant − wild-type tracks of the features that move most.
(function () {
  "use strict";

  // blue (negative) - white - red (positive); |v| >= scale is full colour: the site's one rule
  const diverging = window.protsae.colour;

  function showError(message) {
    const el = document.getElementById("form-error");
    el.textContent = message;
    el.hidden = !message;
  }

  async function post(endpoint, body) {
    const response = await fetch(endpoint, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const data = await response.json().catch(function () { return null; });
    if (!response.ok) {
      const err = (data && data.error) || {};
      let message = err.message || ("HTTP " + response.status);
      if (Array.isArray(err.detail) && err.detail.length) {
        message += ": " + err.detail.map(function (d) { return (d.loc || []).slice(1).join(".") + " " + d.msg; }).join("; ");
      }
      throw new Error(message);
    }
    return data;
  }

  function paintSequence(el, sequence, values, scale, classes) {
    el.innerHTML = "";
    for (let i = 0; i < sequence.length; i++) {
      const span = document.createElement("span");
      span.textContent = sequence[i];
      const v = values[i];
      span.dataset.position = String(i + 1);
      if (v !== null && v !== undefined && !Number.isNaN(v)) {
        span.style.background = v !== 0 ? diverging(v, scale) : "";
        span.title = (i + 1) + " " + sequence[i] + " · " + v.toFixed(3);
      } else {
        span.title = (i + 1) + " " + sequence[i];
      }
      (classes[i] || []).forEach(function (c) { span.classList.add(c); });
      el.appendChild(span);
    }
  }

  // 3D: a stored structure of the matching protein, coloured by one value per sequence position.
  function show3D(el, match, values, scale, sticks) {
    if (typeof $3Dmol === "undefined" || !match || !match.structures.length) { el.hidden = true; return; }
    const ref = match.structures[0];
    const map = {};
    ref.residue_ids.forEach(function (rid, k) { map[rid] = ref.sequence_positions[k]; });
    const key = function (a) { return String(a.resi) + (a.icode || "").trim(); };
    fetch(ref.url).then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); }).then(function (text) {
      el.hidden = false;
      el.innerHTML = "";
      const viewer = $3Dmol.createViewer(el, { backgroundColor: "white" });
      viewer.addModel(text, ref.format === "mmcif" ? "cif" : "pdb");
      viewer.setStyle({}, { cartoon: { color: "#dddddd" } });
      viewer.setStyle({ chain: ref.chain }, { cartoon: { colorfunc: function (atom) {
        const pos = map[key(atom)];
        const v = pos === undefined ? null : values[pos];
        return v === null || v === undefined || Number.isNaN(v) ? "#cccccc" : diverging(v, scale);
      } } });
      viewer.addStyle({ chain: ref.chain, predicate: function (a) { return sticks.has(map[key(a)]); } },
        { stick: { colorscheme: "default" } });
      viewer.zoomTo();
      viewer.render();
    }).catch(function () { el.hidden = true; });
  }

  // ---- steering ---------------------------------------------------------------------------------

  function steerBody(form) {
    const mode = form.mode.value;
    const positions = form.positions.value.trim() || "all";
    const intervention = { feature: Number(form.feature.value), mode: mode, positions: positions };
    if (mode !== "ablate") intervention.value = Number(form.value.value);
    return { sae_id: Number(form.sae_id.value), sequence: form.sequence.value, interventions: [intervention] };
  }

  function drawHeatmap(data) {
    const canvas = document.getElementById("heatmap");
    const cell = Math.max(3, Math.min(12, Math.floor(1100 / data.positions.length)));
    const rowH = 10, left = 18, top = 2;
    canvas.width = left + cell * data.positions.length;
    canvas.height = top + rowH * 20;
    const ctx = canvas.getContext("2d");
    const all = [];
    data.positions.forEach(function (p) {
      p.log_p_after.forEach(function (a, j) { all.push(Math.abs(a - p.log_p_before[j])); });
    });
    all.sort(function (a, b) { return a - b; });
    const largest = all.length ? all[all.length - 1] : 0;
    // Colours saturate at the 98th percentile of |Δ|, so a few extreme cells do not wash out the rest.
    const scale = Math.max(1e-6, all.length ? all[Math.floor(0.98 * (all.length - 1))] : 0);
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.font = "9px monospace";
    ctx.fillStyle = "#333";
    for (let j = 0; j < 20; j++) ctx.fillText(data.amino_acids[j], 4, top + rowH * j + 8);
    data.positions.forEach(function (p, i) {
      for (let j = 0; j < 20; j++) {
        ctx.fillStyle = diverging(p.log_p_after[j] - p.log_p_before[j], scale);
        ctx.fillRect(left + cell * i, top + rowH * j, cell, rowH);
      }
    });
    canvas.onmousemove = function (event) {
      const rect = canvas.getBoundingClientRect();
      const i = Math.floor((event.clientX - rect.left - left) / cell);
      const j = Math.floor((event.clientY - rect.top - top) / rowH);
      const p = data.positions[i];
      if (!p || j < 0 || j >= 20) { canvas.title = ""; return; }
      const d = p.log_p_after[j] - p.log_p_before[j];
      canvas.title = "position " + p.position + " (" + p.residue + ") → " + data.amino_acids[j] +
        ": Δ log p " + d.toFixed(3) + ", p " + Math.exp(p.log_p_before[j]).toFixed(3) + " → " + Math.exp(p.log_p_after[j]).toFixed(3);
    };
    document.getElementById("heatmap-legend").textContent =
      "Rows: amino acids; columns: positions 1–" + data.positions.length + ". Colour: Δ log p, full blue at −" +
      scale.toFixed(3) + " or below (less likely after steering), full red at +" + scale.toFixed(3) +
      " or above (more likely): the 98th percentile of |Δ|; the largest |Δ| is " + largest.toFixed(3) + ". Hover a cell for its values.";
    return scale;
  }

  function renderSteer(form, data) {
    const body = steerBody(form);
    const iv = body.interventions[0];
    const residueDelta = data.positions.map(function (p) {
      const j = data.amino_acids.indexOf(p.residue);
      return j < 0 ? null : p.log_p_after[j] - p.log_p_before[j];
    });
    let scale = 1e-6;
    residueDelta.forEach(function (v) { if (v !== null) scale = Math.max(scale, Math.abs(v)); });
    const picked = new Set(iv.positions === "all" ? [] : expandPositions(iv.positions));
    const changed = new Set(data.changed_positions.map(function (p) { return p - 1; }));
    const classes = data.positions.map(function (p, i) {
      const c = [];
      if (changed.has(i)) c.push("changed");
      if (picked.has(i)) c.push("picked");
      return c;
    });
    paintSequence(document.getElementById("steer-sequence"), data.sequence, residueDelta, scale, classes);
    document.getElementById("steered-sequence").textContent = data.steered_sequence;
    const what = iv.mode === "ablate" ? "ablated" : (iv.mode === "clamp" ? "clamped to " + iv.value : "scaled by " + iv.value);
    let pooled = "";
    if (data.pooled_before) pooled = "; protein-level code " + data.pooled_before[0].toFixed(3) + " → " + data.pooled_after[0].toFixed(3) + " after re-encoding";
    document.getElementById("steer-summary").textContent =
      "Feature " + iv.feature + " of SAE " + data.sae_id + " (" + data.level + " level, layer " + data.layer + ") " + what +
      " at " + (iv.positions === "all" ? "every position" : "positions " + iv.positions) + pooled + ". " +
      data.changed_positions.length + " of " + data.positions.length + " positions changed their most likely amino acid.";
    drawHeatmap(data);
    const rows = document.querySelector("#changed-table tbody");
    rows.innerHTML = "";
    data.positions.filter(function (p) { return p.argmax_after !== p.argmax_before; }).forEach(function (p) {
      const tr = document.createElement("tr");
      const subs = p.top_substitutions.map(function (s) { return s.amino_acid + " " + (s.delta_log_p >= 0 ? "+" : "") + s.delta_log_p.toFixed(2); }).join(", ");
      const feat = p.feature_before ? p.feature_before[0].toFixed(2) + " → " + p.feature_after[0].toFixed(2) : "—";
      [p.position, p.residue, p.argmax_before, p.argmax_after, subs, feat].forEach(function (v) {
        const td = document.createElement("td");
        td.textContent = String(v);
        tr.appendChild(td);
      });
      rows.appendChild(tr);
    });
    // Sticks: the (at most 20) changed residues whose own amino acid lost or gained most.
    const sticks = new Set(Array.from(changed).sort(function (a, b) {
      return Math.abs(residueDelta[b] || 0) - Math.abs(residueDelta[a] || 0);
    }).slice(0, 20));
    show3D(document.getElementById("steer-viewer"), data.match, residueDelta, scale, sticks);
    document.getElementById("steer-result").hidden = false;
  }

  function expandPositions(spec) {
    const out = [];
    String(spec).split(",").forEach(function (part) {
      const m = part.trim().match(/^(\d+)(?:-(\d+))?$/);
      if (!m) return;
      const lo = Number(m[1]), hi = Number(m[2] || m[1]);
      for (let p = lo; p <= hi; p++) out.push(p - 1);
    });
    return out;
  }

  function setupSteer(form) {
    const value = form.value, out = document.getElementById("value-out");
    value.addEventListener("input", function () { out.textContent = value.value; });
    form.mode.addEventListener("change", function () {
      value.disabled = form.mode.value === "ablate";
      if (form.mode.value === "scale") { value.min = "-5"; value.max = "20"; value.step = "0.1"; value.value = "3"; }
      else { value.min = "0"; value.max = "50"; value.step = "0.5"; value.value = "10"; }
      out.textContent = value.disabled ? "—" : value.value;
    });
    document.getElementById("steer-sequence").addEventListener("click", function (event) {
      const span = event.target.closest("span[data-position]");
      if (!span) return;
      const current = form.positions.value.trim();
      const set = new Set(current === "all" || !current ? [] : expandPositions(current).map(function (p) { return p + 1; }));
      const p = Number(span.dataset.position);
      if (set.has(p)) set.delete(p); else set.add(p);
      form.positions.value = set.size ? Array.from(set).sort(function (a, b) { return a - b; }).join(",") : "all";
      span.classList.toggle("picked");
    });
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      showError("");
      post(form.dataset.endpoint, steerBody(form)).then(function (data) { renderSteer(form, data); })
        .catch(function (err) { showError(err.message); });
    });
  }

  // ---- variants ---------------------------------------------------------------------------------

  function featureLink(f) {
    const text = "#" + f.index + (f.label ? " " + f.label : "");
    if (!f.feature_id) return document.createTextNode(text);
    const a = document.createElement("a");
    a.href = "/features/" + f.feature_id;
    a.textContent = text;
    return a;
  }

  function cellWith(nodes) {
    const td = document.createElement("td");
    nodes.forEach(function (n, k) { if (k) td.appendChild(document.createTextNode(", ")); td.appendChild(n); });
    if (!nodes.length) td.textContent = "—";
    return td;
  }

  function trackSvg(track) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    let top = 1e-9;
    track.forEach(function (v) { if (v !== null) top = Math.max(top, Math.abs(v)); });
    svg.setAttribute("viewBox", "0 0 " + track.length + " 40");
    svg.setAttribute("preserveAspectRatio", "none");
    const zero = document.createElementNS(ns, "line");
    zero.setAttribute("x1", "0"); zero.setAttribute("x2", String(track.length));
    zero.setAttribute("y1", "20"); zero.setAttribute("y2", "20"); zero.setAttribute("stroke", "#bbb");
    zero.setAttribute("vector-effect", "non-scaling-stroke");
    svg.appendChild(zero);
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("fill", "none"); line.setAttribute("stroke", "#b3261e");
    line.setAttribute("vector-effect", "non-scaling-stroke");
    line.setAttribute("points", track.map(function (v, i) { return i + "," + (20 - 19 * (v || 0) / top).toFixed(1); }).join(" "));
    svg.appendChild(line);
    return svg;
  }

  function showVariant(data, v) {
    document.querySelectorAll("#variants-table tbody tr").forEach(function (tr) {
      tr.setAttribute("aria-selected", String(tr.dataset.name === v.name));
    });
    document.getElementById("variant-title").textContent = "Variant " + v.name + ": mutant − wild type per residue";
    const first = v.top_changes[0];
    const values = first ? first.track : data.sequence.split("").map(function () { return null; });
    let scale = 1e-9;
    values.forEach(function (x) { if (x !== null) scale = Math.max(scale, Math.abs(x)); });
    const classes = data.sequence.split("").map(function () { return []; });
    const edited = new Set();
    v.substitutions.forEach(function (s) { classes[s.position - 1].push("changed"); edited.add(s.position - 1); });
    const deletion = v.name.match(/del(\d+)(?:_(\d+))?/gi) || [];
    deletion.forEach(function (d) {
      const m = d.match(/(\d+)(?:_(\d+))?/);
      for (let p = Number(m[1]); p <= Number(m[2] || m[1]); p++) { classes[p - 1].push("deleted"); edited.add(p - 1); }
    });
    paintSequence(document.getElementById("variant-sequence"), data.sequence, values, scale, classes);
    const tracks = document.getElementById("variant-tracks");
    tracks.innerHTML = "";
    v.top_changes.forEach(function (c) {
      const row = document.createElement("div");
      row.className = "track-row";
      const label = document.createElement("span");
      label.appendChild(featureLink(c));
      label.appendChild(document.createTextNode(" pooled " + c.before.toFixed(3) + " → " + c.after.toFixed(3)));
      row.appendChild(label);
      row.appendChild(trackSvg(c.track));
      tracks.appendChild(row);
    });
    if (!v.top_changes.length) tracks.textContent = "No feature of this dictionary changes.";
    show3D(document.getElementById("variant-viewer"), data.match, values, scale, edited);
  }

  function renderVariants(data) {
    const rows = document.querySelector("#variants-table tbody");
    rows.innerHTML = "";
    const ordered = data.variants.slice().sort(function (a, b) {
      return (a.score === null) - (b.score === null) || (a.score || 0) - (b.score || 0);
    });
    ordered.forEach(function (v) {
      const tr = document.createElement("tr");
      tr.dataset.name = v.name;
      const name = document.createElement("td");
      name.textContent = v.name;
      const score = document.createElement("td");
      score.textContent = v.score === null ? "— (" + v.score_note + ")" : v.score.toFixed(3);
      tr.appendChild(name);
      tr.appendChild(score);
      tr.appendChild(cellWith(v.gained.slice(0, 3).map(featureLink)));
      tr.appendChild(cellWith(v.lost.slice(0, 3).map(featureLink)));
      const top = v.top_changes[0];
      tr.appendChild(cellWith(top ? [featureLink(top), document.createTextNode(" Δ " + top.delta.toFixed(3))] : []));
      tr.addEventListener("click", function () { showVariant(data, v); });
      rows.appendChild(tr);
    });
    document.getElementById("variants-result").hidden = false;
    if (ordered.length) showVariant(data, ordered[0]);
  }

  function setupVariants(form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      showError("");
      const variants = form.variants.value.split("\n").map(function (s) { return s.trim(); }).filter(Boolean);
      const body = { sae_id: Number(form.sae_id.value), sequence: form.sequence.value, variants: variants };
      post(form.dataset.endpoint, body).then(renderVariants).catch(function (err) { showError(err.message); });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    const steer = document.getElementById("steer-form");
    if (steer) setupSteer(steer);
    const variants = document.getElementById("variants-form");
    if (variants) setupVariants(variants);
  });
})();
