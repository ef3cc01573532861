/* Structure viewers (3Dmol.js) coloured per residue by a feature, mounted lazily.
 *
 * A viewer element carries the structure's residue ids and their 0-based sequence positions
 * (the stored alignment), and the feature's values per sequence position. One colour function
 * maps atom -> structure residue id -> sequence position -> value, so numbering follows the
 * mapping, never enumeration order. The protein page repaints the same viewer after an htmx swap.
 */
(function () {
  "use strict";
  var LEVELS = 9;
  var RED = [179, 38, 30], BLUE = [11, 87, 208], UNMAPPED = "#c8ccd2";

  /* Same 9 steps as the residue tracks' CSS classes s1..s9 / n1..n9. */
  function colour(v, scale) {
    if (v === null || v === undefined || isNaN(v)) return UNMAPPED;
    if (!(scale > 0) || v === 0) return "#eceef1";
    var step = Math.max(1, Math.min(LEVELS, Math.ceil(Math.abs(v) / scale * LEVELS)));
    var t = step / LEVELS, c = v < 0 ? BLUE : RED;
    var rgb = c.map(function (x) { return Math.round(255 + (x - 255) * t); });
    return "rgb(" + rgb.join(",") + ")";
  }

  function residueKey(atom) {
    var icode = atom.icode && atom.icode.trim ? atom.icode.trim() : "";
    return String(atom.resi) + icode;
  }

  function paint(el, values, scale, top) {
    var viewer = el._viewer;
    if (!viewer) return;
    var ids = JSON.parse(el.dataset.resids), positions = JSON.parse(el.dataset.positions);
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
      paint(el, JSON.parse(el.dataset.values), parseFloat(el.dataset.scale), JSON.parse(el.dataset.top || "[]"));
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
    paint(el, JSON.parse(panel.dataset.values), parseFloat(panel.dataset.scale), JSON.parse(panel.dataset.top));
  });

  document.addEventListener("DOMContentLoaded", function () { setup(document); });
  window.protsae = { colour: colour, paint: paint, mount: mount };
})();
