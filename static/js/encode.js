// Paint a clicked feature on the pasted sequence and, when a structure is known (a stored
// protein that matches the sequence, or a file the user picked), on a 3Dmol.js view.
(function () {
  "use strict";
  const THREE = { ALA: "A", ARG: "R", ASN: "N", ASP: "D", CYS: "C", GLN: "Q", GLU: "E", GLY: "G",
    HIS: "H", ILE: "I", LEU: "L", LYS: "K", MET: "M", MSE: "M", PHE: "F", PRO: "P", SER: "S",
    THR: "T", TRP: "W", TYR: "Y", VAL: "V", SEC: "U", PYL: "O" };
  let uploaded = null; // {text, format}
  const viewers = {};

  const colour = window.protsae.colour; // the site's one colour rule (static/js/explorer.js)

  function paintSequence(si, feature) {
    const spans = document.querySelectorAll("#seq-" + si + " span");
    const values = feature.values || [];
    const top = Math.max(1e-9, ...values);
    spans.forEach(function (span, i) {
      const v = values[i] || 0;
      span.style.background = v > 0 ? colour(v, top) : "";
      span.title = (i + 1) + " " + span.textContent + " · " + v.toFixed(3);
      span.classList.toggle("peak", i === feature.max_position);
    });
  }

  // Map from a structure residue key ("52" or "52A", chain-scoped) to a sequence position.
  function storedMapping(ref) {
    const map = {};
    ref.residue_ids.forEach(function (rid, k) { map[rid] = ref.sequence_positions[k]; });
    return { chain: ref.chain, key: function (a) { return String(a.resi) + (a.icode || "").trim(); }, map: map };
  }

  function uploadMapping(model, sequence) {
    const atoms = model.selectedAtoms({ atom: "CA" });
    if (!atoms.length) return null;
    const chain = atoms[0].chain;
    const residues = atoms.filter(function (a) { return a.chain === chain; });
    const chainSeq = residues.map(function (a) { return THREE[a.resn] || "X"; }).join("");
    const offset = Math.max(0, sequence.indexOf(chainSeq));
    const map = {};
    residues.forEach(function (a, k) { map[String(a.resi) + (a.icode || "").trim()] = offset + k; });
    return { chain: chain, key: function (a) { return String(a.resi) + (a.icode || "").trim(); }, map: map };
  }

  function show3D(si, result, feature, text, format, mapping) {
    if (typeof $3Dmol === "undefined") return;
    const el = document.getElementById("viewer-" + si);
    el.hidden = false;
    let viewer = viewers[si];
    if (!viewer || viewer.__text !== text) {
      el.innerHTML = "";
      viewer = viewers[si] = $3Dmol.createViewer(el, { backgroundColor: "white" });
      viewer.__text = text;
      viewer.__model = viewer.addModel(text, format);
      viewer.__mapping = mapping || uploadMapping(viewer.__model, result.sequence);
      viewer.zoomTo();
    }
    const m = viewer.__mapping;
    if (!m) return;
    const values = feature.values || [];
    const top = Math.max(1e-9, ...values);
    viewer.setStyle({}, { cartoon: { color: "#dddddd" } });
    viewer.setStyle({ chain: m.chain }, { cartoon: { colorfunc: function (atom) {
      const pos = m.map[m.key(atom)];
      return pos === undefined || pos < 0 ? "#cccccc" : colour(values[pos] || 0, top);
    } } });
    viewer.render();
  }

  function paint(button) {
    const data = JSON.parse(document.getElementById("encode-data").textContent);
    const si = Number(button.dataset.seq);
    const result = data.results[si];
    const feature = result.features[Number(button.dataset.feature)];
    document.querySelectorAll("button.paint[data-seq='" + si + "']").forEach(function (b) {
      b.setAttribute("aria-pressed", String(b === button));
    });
    paintSequence(si, feature);
    if (uploaded) {
      show3D(si, result, feature, uploaded.text, uploaded.format, null);
    } else if (result.match && result.match.structures.length) {
      const ref = result.match.structures[0];
      fetch(ref.url).then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
        .then(function (text) { show3D(si, result, feature, text, ref.format === "mmcif" ? "cif" : "pdb", storedMapping(ref)); })
        .catch(function () { /* the sequence view is already painted */ });
    }
  }

  document.addEventListener("click", function (event) {
    const button = event.target.closest && event.target.closest("button.paint");
    if (button) paint(button);
  });
  document.addEventListener("change", function (event) {
    if (event.target.id !== "structure-file" || !event.target.files.length) return;
    const file = event.target.files[0];
    const format = /\.(cif|mmcif)$/i.test(file.name) ? "cif" : "pdb";
    file.text().then(function (text) { uploaded = { text: text, format: format }; });
  });
})();
