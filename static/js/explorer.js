/* Residue tracks painted from packed values, and structure viewers (3Dmol.js) coloured per
 * residue by a feature, mounted lazily.
 *
 * Per-residue values travel as base64 little-endian float16 (the store's own encoding, so the
 * browser gets the stored values bit for bit): a track is its sequence as text plus data-values;
 * it becomes one span per residue, class s1..s9 / n1..n9 by the server's rule (app/render.level).
 *
 * A viewer element carries the structure's residue ids and their 0-based sequence positions
 * (the stored alignment, as runs), and the feature's values per sequence position. One colour function
 * maps atom -> structure residue id -> sequence position -> value, so numbering follows the
 * mapping, never enumeration order. The protein page repaints the same viewer after an htmx swap.
 */
(function () {
  "use strict";
  /* The one colour rule (app/render.py: level, level_rgb), handed over by base.html. */
  var SCALE = JSON.parse(document.body.dataset.colourScale);
  var LEVELS = SCALE.levels, RED = SCALE.positive, BLUE = SCALE.negative, UNMAPPED = "#c8ccd2";

  /* Same steps as the residue tracks' classes s1..s9 / n1..n9 (app/render.colour_scale_css). */
  function colour(v, scale) {
    if (v === null || v === undefined || isNaN(v)) return UNMAPPED;
    var step = level(v, scale);
    if (!step) return "#eceef1";
    var t = step / LEVELS, c = v < 0 ? BLUE : RED;
    var rgb = c.map(function (x) { return Math.round(255 + (x - 255) * t); });
    return "rgb(" + rgb.join(",") + ")";
  }

  /* IEEE 754 half precision -> number (exact). */
  function half(h) {
    var sign = h & 0x8000 ? -1 : 1, exp = (h >> 10) & 0x1f, frac = h & 0x3ff;
    if (exp === 0) return sign * frac * Math.pow(2, -24);
    if (exp === 31) return frac ? NaN : sign * Infinity;
    return sign * (1 + frac / 1024) * Math.pow(2, exp - 15);
  }

  function decodeValues(packed) {
    var bin = atob(packed || ""), out = new Array(bin.length >> 1);
    for (var i = 0; i < out.length; i++) {
      out[i] = half(bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8));
    }
    return out;
  }

  /* app/render.level: ceil(|v| / scale * 9) clipped to 1..9; 0 (unshaded) for 0, NaN, scale <= 0. */
  function level(v, scale) {
    if (!(scale > 0) || v === 0 || isNaN(v)) return 0;
    return Math.max(1, Math.min(LEVELS, Math.ceil(Math.abs(v) / scale * LEVELS)));
  }

  var ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" };
  function esc(c) { return ESCAPES[c] || c; }

  function paintTrack(el) {
    if (el.dataset.painted || el.dataset.values === undefined) return;
    var seq = el.textContent, values = decodeValues(el.dataset.values);
    var scale = parseFloat(el.dataset.scale), parts = new Array(seq.length);
    for (var i = 0; i < seq.length; i++) {
      var v = i < values.length ? values[i] : 0, step = level(v, scale), aa = esc(seq[i]);
      var cls = step ? ' class="' + (v < 0 ? "n" : "s") + step + '"' : "";
      parts[i] = "<span" + cls + ' title="' + aa + (i + 1) + ": " + Number(v.toPrecision(4)) +
        '">' + aa + "</span>";
    }
    el.innerHTML = parts.join("");
    el.dataset.painted = "true";
  }

  function paintTracks(root) {
    (root || document).querySelectorAll("p.track[data-values]").forEach(paintTrack);
  }

  /* The structure's residue ids and their 0-based sequence positions (-1: unmapped), expanded
   * from app/render.residue_runs: [first id, first position, length] per run. */
  function residueMap(el) {
    var ids = [], positions = [];
    JSON.parse(el.dataset.residues).forEach(function (run) {
      for (var k = 0; k < run[2]; k++) {
        ids.push(typeof run[0] === "number" ? String(run[0] + k) : run[0]);
        positions.push(run[1] < 0 ? -1 : run[1] + k);
      }
    });
    return [ids, positions];
  }

  function residueKey(atom) {
    var icode = atom.icode && atom.icode.trim ? atom.icode.trim() : "";
    return String(atom.resi) + icode;
  }

  function paint(el, values, scale, top) {
    var viewer = el._viewer;
    if (!viewer) return;
    var map = residueMap(el), ids = map[0], positions = map[1];
    var byResidue = new Map(), sticks = new Set(), topPositions = new Set(top || []);
    for (var i = 0; i < ids.length; i++) {
      var p = positions[i];
      byResidue.set(String(ids[i]), p >= 0 && p < values.length ? values[p] : null);
      if (p >= 0 && topPositions.has(p)) sticks.add(String(ids[i]));
    }
    var colorfunc = function (atom) { return colour(byResidue.get(residueKey(atom)), scale); };
    var chain = el.dataset.chain;
    viewer.setStyle({}, {});
    viewer.setStyle({ chain: chain }, { cartoon: { colorfunc: colorfunc } });
    viewer.addStyle({ chain: chain, predicate: function (a) { return sticks.has(residueKey(a)); } },
      { stick: { colorfunc: colorfunc, radius: 0.3 } });
    viewer.render();
    el.dataset.painted = String(Date.now());
  }

  function mount(el) {
    if (el.dataset.state !== "idle" || typeof $3Dmol === "undefined") return;
    el.dataset.state = "loading";
    fetch(el.dataset.src).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      return r.text();
    }).then(function (text) {
      var viewer = $3Dmol.createViewer(el.querySelector(".viewer-canvas"),
        { backgroundColor: "white", antialias: true });
      viewer.addModel(text, el.dataset.format === "mmcif" ? "cif" : "pdb");
      el._viewer = viewer;
      paint(el, decodeValues(el.dataset.values), parseFloat(el.dataset.scale), JSON.parse(el.dataset.top || "[]"));
      viewer.zoomTo({ chain: el.dataset.chain });
      viewer.render();
      el.dataset.state = "loaded";
    }).catch(function (err) {
      el.dataset.state = "error";
      el.querySelector(".viewer-msg").textContent = "Structure could not be loaded: " + err.message;
    });
  }

  function setup(root) {
    var viewers = (root || document).querySelectorAll(".viewer[data-state=idle]");
    var observer = "IntersectionObserver" in window ? new IntersectionObserver(function (entries) {
      entries.forEach(function (e) {
        if (e.isIntersecting) { observer.unobserve(e.target); mount(e.target); }
      });
    }, { rootMargin: "200px" }) : null;
    viewers.forEach(function (el) {
      el.querySelector("button.mount").addEventListener("click", function () { mount(el); });
      if (observer) observer.observe(el);
    });
  }

  /* Protein page: the swapped #paint section carries the chosen feature's values; apply them to
   * the existing viewer (no reload) and keep them for a viewer that mounts later. */
  document.addEventListener("htmx:afterSettle", function () {
    paintTracks(document);
    var panel = document.getElementById("paint");
    var el = document.querySelector(".viewer");
    if (!panel || (el && el.dataset.feature === panel.dataset.feature)) return;
    document.querySelectorAll(".paint-choices a[data-feature]").forEach(function (a) {
      a.setAttribute("aria-current", a.dataset.feature === panel.dataset.feature ? "true" : "false");
    });
    if (!el) return;
    el.dataset.feature = panel.dataset.feature;
    el.dataset.values = panel.dataset.values;
    el.dataset.scale = panel.dataset.scale;
    el.dataset.top = panel.dataset.top;
    paint(el, decodeValues(panel.dataset.values), parseFloat(panel.dataset.scale), JSON.parse(panel.dataset.top));
  });

  document.addEventListener("DOMContentLoaded", function () { paintTracks(document); setup(document); });
  window.protsae = { colour: colour, paint: paint, mount: mount, decodeValues: decodeValues,
    level: level, paintTracks: paintTracks, residueMap: residueMap };
})();
