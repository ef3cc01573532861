/* Feature map: every mapped feature of a dictionary as a point on a canvas.
 *
 * Points come column by column from /api/v1/saes/{id}/map (UMAP of decoder directions, scaled
 * into [0, 1] on the longer axis). A canvas rather than SVG, so dictionaries of tens of
 * thousands of latents stay smooth. Hover finds the nearest point within a few pixels; a click
 * opens the feature; the wheel zooms about the pointer and a drag pans. A protein's activations
 * in the URL's fragment (from the protein and encode pages) colour its features and lift them
 * above the rest. Labels reach the page only through textContent (they come from the store, and
 * may hold any text).
 */
(function () {
  "use strict";
  var el = document.getElementById("feature-map");
  if (!el) return;
  var canvas = el.querySelector("canvas"), tip = el.querySelector(".map-tip");
  var msg = el.querySelector(".map-msg"), legend = document.getElementById("map-legend");
  var colourSelect = document.getElementById("map-colour"), filter = document.getElementById("map-filter");
  var countEl = document.getElementById("map-count"), reset = document.getElementById("map-reset");
  var PAD = 18, HIT_PX = 9;
  var GREY = "#b8bec6", GO_LENGTH = "#b3261e", GO_ONLY = "#e8a33d", PLAIN = "#5b6470";
  var VIRIDIS = [[253, 231, 37], [94, 201, 98], [33, 145, 140], [59, 82, 139], [68, 1, 84]];
  var data = null, n = 0, colours = [], matched = null, hover = -1, pinned = -1;
  var overlay = null;  // one protein's activations: {name, values: Map(feature id -> value)}
  var overlayAt = null;  // per point: its activation on that protein, or null
  var overlayMask = null;  // per point: 1 where overlayAt has a value (drawn on top)
  var width = 0, height = 0, base = { s: 1, ox: 0, oy: 0, ymax: 1 }, view = { k: 1, tx: 0, ty: 0 };
  var drag = null;

  function ramp(t) {
    t = Math.max(0, Math.min(1, t)) * (VIRIDIS.length - 1);
    var i = Math.min(VIRIDIS.length - 2, Math.floor(t)), f = t - i, a = VIRIDIS[i], b = VIRIDIS[i + 1];
    return "rgb(" + [0, 1, 2].map(function (j) { return Math.round(a[j] + (b[j] - a[j]) * f); }).join(",") + ")";
  }

  function extent(values) {
    var lo = Infinity, hi = -Infinity;
    values.forEach(function (v) { if (v !== null && isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); } });
    return lo <= hi ? [lo, hi] : null;
  }

  function goClass(i) {
    var all = data.n_go_hits[i], beyond = data.n_go_hits_length[i];
    if (beyond === null) return all > 0 ? 2 : 0;  // runs without the length test
    return beyond > 0 ? 2 : (all > 0 ? 1 : 0);
  }

  /* A protein's activations from the URL's fragment: #name=P69905&act=12:0.53,40:0.2 (feature
   * id : value), as the protein and encode pages link here. */
  function readOverlay() {
    var params = new URLSearchParams(window.location.hash.slice(1)), values = new Map();
    (params.get("act") || "").split(",").forEach(function (pair) {
      var parts = pair.split(":"), id = parseInt(parts[0], 10), v = parseFloat(parts[1]);
      if (parts.length === 2 && isFinite(id) && isFinite(v)) values.set(id, v);
    });
    overlay = values.size ? { name: params.get("name") || "this protein", values: values } : null;
    overlayAt = data.feature_id.map(function (id) {
      return overlay && overlay.values.has(id) ? overlay.values.get(id) : null;
    });
    overlayMask = overlayAt.map(function (v) { return v === null ? 0 : 1; });
    var option = colourSelect.querySelector("option[value=overlay]");
    if (overlay && !option) {
      option = document.createElement("option");
      option.value = "overlay";
      colourSelect.prepend(option);
    }
    if (option && !overlay) {
      option.remove();
      if (!colourSelect.value) colourSelect.value = "density";
    }
    if (overlay) {
      option.textContent = "activation on " + overlay.name;
      colourSelect.value = "overlay";
      var shown = overlayAt.filter(function (v) { return v !== null; }).length;
      el.dataset.overlay = String(shown);
      countEl.textContent = shown + " of " + overlay.name + "'s " + overlay.values.size
        + " features are on the map";
    } else {
      delete el.dataset.overlay;
    }
  }

  /* Colours per point, and the legend that explains them. */
  function recolour() {
    var mode = colourSelect.value, range, values;
    legend.textContent = "";
    if (mode === "overlay" && overlay) {
      var top = overlayAt.reduce(function (m, v) { return v === null ? m : Math.max(m, v); }, 0);
      colours = overlayAt.map(function (v) { return v === null ? GREY : ramp(top > 0 ? v / top : 1); });
      var scale = document.createElement("span");
      scale.className = "ramp";
      scale.style.background = "linear-gradient(to right," + [0, 0.25, 0.5, 0.75, 1].map(ramp).join(",") + ")";
      legend.append("activation on " + overlay.name + ": 0", scale, top.toPrecision(3),
        " · grey: not among its features");
    } else if (mode === "density" || mode === "score") {
      values = mode === "density"
        ? data.density.map(function (d) { return d > 0 ? Math.log10(d) : null; })
        : data.explanation_score;
      range = extent(values);
      colours = values.map(function (v) {
        if (v === null || !range) return GREY;
        return ramp(range[1] > range[0] ? (v - range[0]) / (range[1] - range[0]) : 0.5);
      });
      if (range) {
        var fmt = mode === "density"
          ? function (v) { return (100 * Math.pow(10, v)).toPrecision(2) + "%"; }
          : function (v) { return v.toFixed(2); };
        var bar = document.createElement("span");
        bar.className = "ramp";
        bar.style.background = "linear-gradient(to right," + [0, 0.25, 0.5, 0.75, 1].map(ramp).join(",") + ")";
        legend.append(fmt(range[0]), bar, fmt(range[1]));
        if (mode === "score") legend.append(" · grey: not scored");
      } else {
        legend.append(mode === "score" ? "No feature of this dictionary has an explanation score." : "");
      }
    } else if (mode === "go") {
      var names = ["no GO hit", "GO hits that protein length explains", "GO hit beyond protein length"];
      var swatches = [GREY, GO_ONLY, GO_LENGTH];
      colours = data.index.map(function (_, i) { return swatches[goClass(i)]; });
      [2, 1, 0].forEach(function (c) {
        var item = document.createElement("span"), dot = document.createElement("span");
        dot.className = "swatch";
        dot.style.background = swatches[c];
        item.append(dot, names[c]);
        legend.append(item);
      });
    } else {
      colours = data.index.map(function () { return PLAIN; });
    }
  }

  /* Which points the highlight box matches: "#12" is feature index 12, else label text. */
  function refilter() {
    var q = filter.value.trim().toLowerCase();
    if (!q) {
      matched = null;
      if (!overlay) countEl.textContent = "";
      return;
    }
    var byIndex = /^#\d+$/.test(q) ? parseInt(q.slice(1), 10) : null, count = 0;
    matched = new Uint8Array(n);
    for (var i = 0; i < n; i++) {
      var hit = byIndex !== null ? data.index[i] === byIndex
        : (data.label[i] || "").toLowerCase().indexOf(q) >= 0;
      if (hit) { matched[i] = 1; count++; }
    }
    countEl.textContent = count + " of " + n + " features match";
  }

  function layout() {
    var box = canvas.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
    width = box.width;
    height = box.height;
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
    canvas.getContext("2d").setTransform(dpr, 0, 0, dpr, 0, 0);
    var xmax = Math.max(1e-9, extent(data.x)[1]), ymax = Math.max(1e-9, extent(data.y)[1]);
    var s = Math.min((width - 2 * PAD) / xmax, (height - 2 * PAD) / ymax);
    base = { s: s, ox: (width - s * xmax) / 2, oy: (height - s * ymax) / 2, ymax: ymax };
  }

  function screen(i) {
    return [view.k * (base.ox + base.s * data.x[i]) + view.tx,
            view.k * (base.oy + base.s * (base.ymax - data.y[i])) + view.ty];
  }

  function radius() {
    var r = n > 20000 ? 1.6 : n > 4000 ? 2.2 : 3;
    return r * Math.min(3, Math.sqrt(view.k));
  }

  function dot(ctx, i, r, fill, stroke) {
    var p = screen(i);
    ctx.beginPath();
    ctx.arc(p[0], p[1], r, 0, 2 * Math.PI);
    ctx.fillStyle = fill;
    ctx.fill();
    if (stroke) {
      ctx.lineWidth = 1.5;
      ctx.strokeStyle = stroke;
      ctx.stroke();
    }
  }

  function draw() {
    var ctx = canvas.getContext("2d"), r = radius(), i;
    var lifted = matched || (colourSelect.value === "overlay" && overlay ? overlayMask : null);
    ctx.clearRect(0, 0, width, height);
    ctx.globalAlpha = lifted ? 0.25 : 0.85;
    for (i = 0; i < n; i++) if (!lifted || !lifted[i]) dot(ctx, i, r, colours[i]);
    ctx.globalAlpha = 1;
    if (lifted) for (i = 0; i < n; i++) if (lifted[i]) dot(ctx, i, r + 1.5, colours[i], "#1b1f24");
    [pinned, hover].forEach(function (j) {
      if (j >= 0) dot(ctx, j, r + 4, "rgba(255,255,255,0)", "#1b1f24");
    });
    el.dataset.drawn = String(n);
  }

  function nearest(mx, my) {
    var best = -1, bestD = HIT_PX * HIT_PX;
    for (var i = 0; i < n; i++) {
      var p = screen(i), dx = p[0] - mx, dy = p[1] - my, d = dx * dx + dy * dy;
      if (d <= bestD && (!matched || matched[i] || best < 0)) { best = i; bestD = d; }
    }
    return best;
  }

  function line(text, cls) {
    var div = document.createElement("div");
    if (cls) div.className = cls;
    div.textContent = text;
    return div;
  }

  function showTip(i) {
    if (i < 0) { tip.hidden = true; return; }
    var p = screen(i), go = data.n_go_hits[i], beyond = data.n_go_hits_length[i];
    var score = data.explanation_score[i];
    tip.textContent = "";
    tip.append(
      line("#" + data.index[i] + " " + (data.label[i] || "(no label)")),
      line("density " + (100 * data.density[i]).toPrecision(2) + "% · GO hits " + go
           + (beyond === null ? "" : " (" + beyond + " beyond length)")
           + (score === null ? "" : " · score " + score.toFixed(2)), "muted"));
    if (overlay && overlayAt[i] !== null) {
      tip.append(line("activation on " + overlay.name + ": " + overlayAt[i].toPrecision(3)));
    }
    tip.append(line("click to open", "muted"));
    tip.hidden = false;
    var left = Math.min(Math.max(4, p[0] + 12), Math.max(4, width - tip.offsetWidth - 4));
    var top = p[1] + 12 + tip.offsetHeight > height ? p[1] - tip.offsetHeight - 12 : p[1] + 12;
    tip.style.left = left + "px";
    tip.style.top = Math.max(4, top) + "px";
    tip.dataset.feature = String(data.feature_id[i]);
  }

  function point(event) {
    var box = canvas.getBoundingClientRect();
    return [event.clientX - box.left, event.clientY - box.top];
  }

  canvas.addEventListener("pointerdown", function (event) {
    drag = { start: point(event), tx: view.tx, ty: view.ty, moved: false };
    canvas.setPointerCapture(event.pointerId);
  });
  canvas.addEventListener("pointermove", function (event) {
    if (!data) return;
    var m = point(event);
    if (drag) {
      var dx = m[0] - drag.start[0], dy = m[1] - drag.start[1];
      if (drag.moved || dx * dx + dy * dy > 9) {
        drag.moved = true;
        view.tx = drag.tx + dx;
        view.ty = drag.ty + dy;
        draw();
        showTip(-1);
        return;
      }
    }
    var i = nearest(m[0], m[1]);
    if (i !== hover) {
      hover = i;
      draw();
    }
    showTip(hover >= 0 ? hover : pinned);
    canvas.style.cursor = hover >= 0 ? "pointer" : "crosshair";
  });
  canvas.addEventListener("pointerup", function (event) {
    var wasDrag = drag && drag.moved;
    drag = null;
    if (wasDrag || !data) return;
    var m = point(event), i = nearest(m[0], m[1]);
    if (i >= 0) window.location.href = "/features/" + data.feature_id[i];
  });
  canvas.addEventListener("pointerleave", function () {
    hover = -1;
    if (data) { draw(); showTip(pinned); }
  });
  canvas.addEventListener("wheel", function (event) {
    if (!data) return;
    event.preventDefault();
    var m = point(event), f = Math.exp(-event.deltaY * 0.0015);
    var k = Math.min(60, Math.max(0.5, view.k * f));
    f = k / view.k;
    view = { k: k, tx: m[0] - (m[0] - view.tx) * f, ty: m[1] - (m[1] - view.ty) * f };
    draw();
    showTip(hover >= 0 ? hover : pinned);
  }, { passive: false });
  reset.addEventListener("click", function () {
    view = { k: 1, tx: 0, ty: 0 };
    if (data) { draw(); showTip(pinned); }
  });
  colourSelect.addEventListener("change", function () { if (data) { recolour(); draw(); } });
  filter.addEventListener("input", function () { if (data) { refilter(); draw(); } });

  fetch(el.dataset.src).then(function (r) {
    if (!r.ok) throw new Error("HTTP " + r.status);
    return r.json();
  }).then(function (json) {
    data = json;
    n = data.feature_id.length;
    var want = el.dataset.highlight ? parseInt(el.dataset.highlight, 10) : null;
    pinned = want === null ? -1 : data.feature_id.indexOf(want);
    layout();
    readOverlay();
    recolour();
    refilter();
    draw();
    showTip(pinned);
    el.dataset.state = "ready";
    window.addEventListener("hashchange", function () { readOverlay(); recolour(); draw(); });
    if (window.ResizeObserver) new ResizeObserver(function () { layout(); draw(); showTip(pinned); }).observe(el);
    /* For scripts and the browser tests: where a feature is drawn, in CSS pixels of the canvas. */
    el.screenOf = function (featureId) {
      var i = data.feature_id.indexOf(featureId);
      return i < 0 ? null : screen(i);
    };
  }).catch(function (err) {
    el.dataset.state = "error";
    msg.textContent = "The map could not be loaded (" + err.message + ").";
  });
})();
