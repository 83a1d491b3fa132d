"use strict";
// at2po view: draws the embedded run data (curves and turn trees) with plain DOM and SVG.
(function () {
  const DATA = JSON.parse(document.getElementById("report-data").textContent);
  const SVG_NS = "http://www.w3.org/2000/svg";
  const RUN_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
    "#e377c2", "#17becf"];
  const KEY_DASHES = ["", "6,3", "2,2", "8,3,2,3", "1,3"];
  const CHARTS = [
    { title: "Held-out EM", keys: ["eval/em"] },
    { title: "Held-out F1", keys: ["eval/f1"] },
    { title: "Reward (mean over rows)", keys: ["reward/mean"] },
    { title: "Generated tokens per step", keys: ["rollout/generated_tokens"] },
    { title: "Policy entropy", keys: ["policy/entropy"] },
    { title: "KL to the old policy / reference", keys: ["policy/approx_kl", "loss/kl"] },
    { title: "Clip fraction", keys: ["policy/clipfrac_low", "policy/clipfrac_high",
      "policy/clipfrac_dual"] },
    { title: "Seconds per phase", keys: ["perf/seconds_rollout", "perf/seconds_credit",
      "perf/seconds_logprobs", "perf/seconds_update", "perf/seconds_eval"] },
  ];
  const X_AXES = {
    step: { label: "step", get: (r) => r.step },
    tokens: { label: "generated tokens", get: (r) => r["rollout/generated_tokens_total"] || 0 },
  };
  const NODE_W = 178, NODE_H = 74, GAP_X = 14, GAP_Y = 46, PAD = 12;

  // ------------------------------------------------------------------ DOM helpers
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    children.forEach((c) => node.append(c));
    return node;
  }
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    children.forEach((c) => node.append(c));
    return node;
  }
  function setAttrs(node, attrs) {
    Object.entries(attrs || {}).forEach(([k, v]) => {
      if (v !== null && v !== undefined) node.setAttribute(k, v);
    });
  }
  function num(x, digits) {
    return x === null || x === undefined ? "—" : Number(x).toFixed(digits === undefined ? 3 : digits);
  }
  function signed(x) {
    return x === null || x === undefined ? "—" : (x >= 0 ? "+" : "") + Number(x).toFixed(3);
  }
  function clip(text, n) {
    const flat = text.replace(/\s+/g, " ").trim();
    return flat.length > n ? flat.slice(0, n - 1) + "…" : flat;
  }

  // ------------------------------------------------------------------------ curves
  // Round tick positions covering [lo, hi]; integer steps only when the axis counts (steps).
  function niceTicks(lo, hi, count, integer) {
    if (lo === hi) { lo -= integer ? 1 : 0.5; hi += integer ? 1 : 0.5; }
    const raw = (hi - lo) / count;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    let step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
    if (integer) step = Math.max(1, Math.round(step));
    const ticks = [];
    for (let i = Math.ceil(lo / step); i * step <= hi + step * 1e-9; i++) ticks.push(i * step);
    const top = Math.max(Math.abs(ticks[0]), Math.abs(ticks[ticks.length - 1]));
    return { lo: Math.min(lo, ticks[0]), hi: Math.max(hi, ticks[ticks.length - 1]), ticks,
      label: (t) => tickLabel(t, step, top) };
  }
  // A tick as few digits as its spacing needs, in k or M when the axis reaches 10⁴ or 10⁶.
  function tickLabel(t, step, top) {
    const [unit, suffix] = top >= 1e6 ? [1e6, "M"] : top >= 1e4 ? [1e3, "k"] : [1, ""];
    const decimals = Math.max(0, -Math.floor(Math.log10(step / unit) + 1e-9));
    return (t / unit).toFixed(Math.min(decimals, 6)) + suffix;
  }
  // One line per (run, metric): coloured by run and dashed by metric when several runs are
  // overlaid, coloured by metric when there is one run.
  function chartSeries(spec, axis) {
    const series = [];
    const byRun = DATA.runs.length > 1;
    DATA.runs.forEach((run, r) => {
      spec.keys.forEach((key, k) => {
        const points = run.metrics.filter((m) => key in m).map((m) => [axis.get(m), m[key], m.step]);
        if (points.length) {
          series.push({ run: run.name, key, points,
            colour: RUN_COLOURS[(byRun ? r : k) % RUN_COLOURS.length],
            dash: byRun ? KEY_DASHES[k % KEY_DASHES.length] : "" });
        }
      });
    });
    return series;
  }
  function drawChart(spec, axisName) {
    const axis = X_AXES[axisName];
    const series = chartSeries(spec, axis);
    if (!series.length) return null;
    const W = 380, H = 210, L = 52, R = 12, T = 8, B = 32;
    const xs = series.flatMap((s) => s.points.map((p) => p[0]));
    const ys = series.flatMap((s) => s.points.map((p) => p[1]));
    const xt = niceTicks(Math.min(...xs), Math.max(...xs), 5, true);
    const yt = niceTicks(Math.min(...ys), Math.max(...ys), 4, false);
    const px = (x) => L + ((x - xt.lo) / (xt.hi - xt.lo)) * (W - L - R);
    const py = (y) => H - B - ((y - yt.lo) / (yt.hi - yt.lo)) * (H - T - B);
    const plot = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}` });
    yt.ticks.forEach((t) => {
      plot.append(svg("line", { x1: L, x2: W - R, y1: py(t), y2: py(t), stroke: "#eceef3" }));
      plot.append(svg("text", { x: L - 4, y: py(t) + 3, "text-anchor": "end" }, yt.label(t)));
    });
    xt.ticks.forEach((t) => {
      plot.append(svg("line", { x1: px(t), x2: px(t), y1: H - B, y2: H - B + 4, stroke: "#888" }));
      plot.append(svg("text", { x: px(t), y: H - B + 14, "text-anchor": "middle" }, xt.label(t)));
    });
    plot.append(svg("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, stroke: "#888" }));
    plot.append(svg("text", { x: (L + W - R) / 2, y: H - 3, "text-anchor": "middle" }, axis.label));
    series.forEach((s) => {
      const line = svg("polyline", {
        class: "series", "data-run": s.run, "data-key": s.key, "data-points": s.points.length,
        points: s.points.map((p) => `${px(p[0])},${py(p[1])}`).join(" "),
        fill: "none", stroke: s.colour, "stroke-width": 2, "stroke-dasharray": s.dash || null,
      });
      plot.append(line);
      s.points.forEach((p) => {
        const dot = svg("circle", { cx: px(p[0]), cy: py(p[1]), r: 2.6, fill: s.colour });
        dot.append(svg("title", {}, `${s.run} · ${s.key}\nstep ${p[2]} · ${axis.label} ` +
          `${p[0]}\n${p[1]}`));
        plot.append(dot);
      });
    });
    const legend = el("div", { class: "legend" });
    series.forEach((s) => {
      const label = DATA.runs.length > 1 ? `${s.run} · ${s.key}` : s.key;
      const item = el("span", { style: `--c:${s.colour}` }, label);
      if (s.dash) item.style.setProperty("--c", `repeating-linear-gradient(90deg, ${s.colour} 0 4px, transparent 4px 6px)`);
      legend.append(item);
    });
    return el("div", { class: "chart", "data-metric": spec.keys.join(",") },
      el("h3", {}, spec.title), plot, legend);
  }
  function renderCharts(box, axisName) {
    box.replaceChildren();
    CHARTS.map((spec) => drawChart(spec, axisName)).filter(Boolean).forEach((c) => box.append(c));
  }

  // ------------------------------------------------------------------------- trees
  function children(nodes) {
    const kids = nodes.map(() => []);
    nodes.forEach((n) => { if (n.parent !== null) kids[n.parent].push(n.id); });
    return kids;
  }
  function layout(nodes) {
    const kids = children(nodes);
    const pos = nodes.map(() => ({ slot: 0, depth: 0 }));
    let next = 0;
    (function place(id, depth) {
      pos[id].depth = depth;
      if (!kids[id].length) { pos[id].slot = next++; return; }
      kids[id].forEach((c) => place(c, depth + 1));
      pos[id].slot = (pos[kids[id][0]].slot + pos[kids[id][kids[id].length - 1]].slot) / 2;
    })(0, 0);
    return { pos, kids, slots: Math.max(next, 1),
      depth: Math.max(...pos.map((p) => p.depth)) };
  }
  function advantageColour(a, scale) {
    if (a === null || a === undefined || scale === 0) return "#ffffff";
    const t = Math.max(-1, Math.min(1, a / scale));
    const [r, g, b] = t >= 0 ? [26, 152, 80] : [215, 48, 31];
    const mix = (c) => Math.round(255 + (c - 255) * Math.abs(t) * 0.75);
    return `rgb(${mix(r)},${mix(g)},${mix(b)})`;
  }
  function turnLabel(turn, node) {
    if (node.parent === null) return "question";
    const text = turn ? turn.act : "";
    const answer = /<answer>([\s\S]*?)(<\/answer>|$)/.exec(text);
    if (answer && node.finish === "answer") return "answer: " + answer[1];
    const search = /<search>([\s\S]*?)(<\/search>|$)/.exec(text);
    if (search && node.finish === "tool_call") return "search: " + search[1];
    return (node.finish || "turn") + ": " + text.replace(/<\/?think>/g, "");
  }
  function rowCount(group, id) {
    return group.row_leaves.filter((leaf) => leaf === id).length;
  }
  function nodeBadges(group, node, turn) {
    const lines = [];
    if (node.parent !== null) {
      let expansion = `H ${num(node.entropy)}`;
      if (turn && turn.score !== null) expansion += `  S ${num(turn.score)}`;
      if (node.picks && node.picks.length) expansion += `  ★${node.picks.length}`;
      if (node.intervention) expansion += "  TTI";
      if (node.redraws) expansion += `  ↻${node.redraws}`;
      lines.push(expansion);
    } else if (node.picks && node.picks.length) {
      lines.push(`★${node.picks.length} fresh chains`);
    }
    const credit = [];
    if (turn && turn.value !== null && turn.value !== undefined) credit.push(`V ${signed(turn.value)}`);
    if (turn) credit.push(`A ${signed(turn.advantage)}`);
    if (credit.length) lines.push(credit.join("  "));
    if (node.reward !== null && node.reward !== undefined) {
      const s = node.scores || {};
      lines.push(`R ${num(node.reward, 2)} EM ${num(s.em, 0)} F1 ${num(s.f1, 2)} fmt ${num(s.format_ok, 0)}`);
    }
    return lines;
  }
  function drawTree(group, onSelect) {
    const nodes = group.tree.nodes;
    const turns = group.turns || [];
    const { pos, kids, slots, depth } = layout(nodes);
    const scale = Math.max(0, ...turns.slice(1).map((t) => Math.abs(t.advantage || 0)));
    const W = PAD * 2 + slots * (NODE_W + GAP_X), H = PAD * 2 + (depth + 1) * (NODE_H + GAP_Y);
    const x = (id) => PAD + pos[id].slot * (NODE_W + GAP_X);
    const y = (id) => PAD + pos[id].depth * (NODE_H + GAP_Y);
    const root = svg("svg", { width: W, height: H, class: "tree", viewBox: `0 0 ${W} ${H}` });
    nodes.forEach((n) => kids[n.id].forEach((c) => {
      const x1 = x(n.id) + NODE_W / 2, y1 = y(n.id) + NODE_H, x2 = x(c) + NODE_W / 2, y2 = y(c);
      const my = (y1 + y2) / 2;
      root.append(svg("path", { class: "tree-edge", d: `M${x1},${y1} C${x1},${my} ${x2},${my} ${x2},${y2}` }));
    }));
    nodes.forEach((n) => {
      const turn = turns[n.id];
      const rows = rowCount(group, n.id);
      const g = svg("g", {
        class: "tree-node" + (rows ? " row" : ""), transform: `translate(${x(n.id)},${y(n.id)})`,
        "data-node-id": n.id, tabindex: 0,
      });
      g.append(svg("rect", { width: NODE_W, height: NODE_H, rx: 6,
        fill: n.parent === null ? "#e8ecf4" : advantageColour(turn && turn.advantage, scale) }));
      const title = `#${n.id} ${turnLabel(turn, n)}`;
      g.append(svg("text", { x: 6, y: 14 }, clip(title, rows ? 22 : 30)));
      nodeBadges(group, n, turn).forEach((line, i) =>
        g.append(svg("text", { x: 6, y: 30 + i * 14, class: "badge" }, line)));
      if (rows) g.append(svg("text", { x: NODE_W - 6, y: 14, "text-anchor": "end", class: "badge" },
        (n.scores && n.scores.em === 1 ? "✓ " : "") + `row×${rows}`));
      g.append(svg("title", {}, title));
      g.addEventListener("click", () => onSelect(n.id, g));
      g.addEventListener("keydown", (e) => { if (e.key === "Enter") onSelect(n.id, g); });
      root.append(g);
    });
    return root;
  }
  function tokenColour(logprob) {
    const p = Math.exp(logprob);
    return `rgba(255, 140, 0, ${(0.75 * (1 - p)).toFixed(3)})`;
  }
  function nodeDetail(group, id) {
    const node = group.tree.nodes[id];
    const turn = (group.turns || [])[id];
    const box = el("div", { class: "detail", id: "node-detail", "data-node-id": id });
    if (node.parent === null) {
      box.append(el("h3", {}, "Root: the question"),
        el("pre", {}, group.example.question),
        el("div", { class: "badges" },
          el("span", {}, `prompt ${group.tree.prompt_ids.length} tokens`),
          el("span", {}, `V ${turn ? signed(turn.value) : "—"}`),
          el("span", {}, `expansion picks (fresh chains) ${(node.picks || []).length}`)));
      return box;
    }
    const path = [];
    for (let n = node; n.parent !== null; n = group.tree.nodes[n.parent]) path.push(n.id);
    box.append(el("h3", {}, `Node #${id} · turn ${path.length} · finish: ${node.finish}`));
    const badges = el("div", { class: "badges" });
    const add = (label, value) => badges.append(el("span", { "data-badge": label }, `${label} ${value}`));
    add("H", num(node.entropy));
    if (turn && turn.score !== null) add("score H−α·b", num(turn.score));
    add("picked", (node.picks || []).length ? node.picks.map((s) => num(s)).join(", ") : "no");
    if (node.turn_score !== null && node.turn_score !== undefined) add("Φ", num(node.turn_score));
    if (node.intervention) add("TTI", node.intervention);
    if (node.redraws) add("redraws", node.redraws);
    if (turn && turn.value !== null) add("V", signed(turn.value));
    if (turn) add("A", signed(turn.advantage));
    if (node.reward !== null && node.reward !== undefined) {
      const s = node.scores || {};
      add("reward", num(node.reward));
      add("EM", num(s.em, 0));
      add("F1", num(s.f1));
      add("format", num(s.format_ok, 0));
      add("rows", rowCount(group, id));
    }
    box.append(badges);
    if (!turn) {
      box.append(el("p", { class: "muted" }, "This tree file has no decoded text (written before " +
        "at2po view existed); token ids: " + node.act_ids.join(" ")));
      return box;
    }
    if (node.obs_ids.length) {
      box.append(el("details", {}, el("summary", {}, `observation (${node.obs_ids.length} tokens)`),
        el("pre", { class: "obs" }, turn.obs)));
    }
    box.append(el("pre", { class: "act" }, turn.act));
    box.append(el("div", { class: "muted" },
      "Sampled tokens with their log-probs (shaded by 1 − p):"));
    const tokens = el("div", { class: "tokens" });
    turn.tokens.forEach((text, i) => {
      const lp = node.act_logprobs[i];
      const forced = Boolean((node.act_forced || [])[i]);
      const m = (node.act_uncertainty || [])[i];
      const t2po = (forced ? " · forced by TTI" : "") +
        (m !== null && m !== undefined ? ` · M ${m.toFixed(3)}` : "");
      const span = el("span", { class: forced ? "token forced" : "token", "data-logprob": lp,
        title: `token id ${node.act_ids[i]} · log p ${lp.toFixed(4)} · p ${Math.exp(lp).toFixed(3)}` + t2po,
        style: `background:${tokenColour(lp)}` },
      el("span", { class: "text" }, text.replace(/\n/g, "↵")), el("span", { class: "lp" }, lp.toFixed(3)));
      tokens.append(span);
    });
    box.append(tokens);
    return box;
  }
  function renderGroup(box, record, index) {
    const group = record.groups[index];
    box.replaceChildren();
    box.append(el("div", { class: "question" },
      el("div", {}, el("b", {}, "Question: "), el("span", { id: "question" }, group.example.question)),
      el("div", {}, el("b", {}, "Gold answer: "),
        el("span", { id: "gold" }, group.example.golden_answers.join(" | "))),
      el("div", { class: "muted" }, `${group.tree.nodes.length} nodes · ` +
        `${group.row_leaves.length} training rows · credit: ${record.estimator || "?"} · ` +
        `α = ${record.sibling_penalty === undefined ? "?" : record.sibling_penalty}`)));
    box.append(el("p", { class: "muted" },
      "Fill: advantage A (", el("span", { class: "scale" }), " negative → positive). " +
      "H: turn entropy; S: expansion score H − α·siblings; ★n: picked n times for re-sampling; " +
      "TTI: T²PO's thinking intervention fired; ↻n: T²PO redrew the turn n times; " +
      "R/EM/F1/fmt on leaves; row×n: training rows ending there. Click a node for its text and tokens."));
    const detailSlot = el("div");
    let selected = null;
    const select = (id, g) => {
      if (selected) selected.classList.remove("selected");
      selected = g;
      g.classList.add("selected");
      detailSlot.replaceChildren(nodeDetail(group, id));
    };
    box.append(el("div", { class: "tree-box" }, drawTree(group, select)), detailSlot);
  }

  // --------------------------------------------------------------------------- page
  function selectBox(id, options, value, onChange) {
    const s = el("select", { id });
    options.forEach(([v, label]) => s.append(el("option", { value: v }, label)));
    s.value = String(value);
    s.addEventListener("change", () => onChange(s.value));
    return s;
  }
  function renderTrees(section) {
    const runs = DATA.runs.map((run, i) => [i, run]).filter(([, run]) => run.trees.length);
    if (!runs.length) {
      section.append(el("p", { class: "muted" }, "No tree records (trees/step_*.json): set " +
        "train.log_trees_every > 0 to record them."));
      return;
    }
    const state = { run: runs[0][0], step: null, group: 0 };
    const controls = el("div", { class: "controls" });
    const body = el("div", { id: "tree-view" });
    section.append(controls, body);
    const draw = () => {
      const run = DATA.runs[state.run];
      let record = run.trees.find((t) => t.step === state.step);
      if (!record) {
        record = run.trees.find((t) => t.step === DATA.step) || run.trees[run.trees.length - 1];
        state.step = record.step;
        state.group = 0;
      }
      controls.replaceChildren(
        el("label", {}, "run ", selectBox("tree-run", runs.map(([i, r]) => [i, r.name]), state.run,
          (v) => { state.run = Number(v); state.step = null; draw(); })),
        el("label", {}, "step ", selectBox("tree-step", run.trees.map((t) => [t.step, t.step]),
          state.step, (v) => { state.step = Number(v); state.group = 0; draw(); })),
        el("label", {}, "prompt ", selectBox("tree-prompt", record.groups.map((g, i) =>
          [i, `${i + 1}. ${clip(g.example.question, 80)}`]), state.group,
          (v) => { state.group = Number(v); draw(); })));
      renderGroup(body, record, state.group);
    };
    draw();
  }
  function renderCurves(section) {
    let axis = "step";
    const box = el("div", { class: "charts", id: "charts" });
    const toggle = el("div", { class: "controls" }, "x axis: ");
    Object.entries(X_AXES).forEach(([name, spec]) => {
      const input = el("input", { type: "radio", name: "x-axis", value: name, id: `x-${name}` });
      input.checked = name === axis;
      input.addEventListener("change", () => { axis = name; renderCharts(box, axis); });
      toggle.append(el("label", {}, input, ` ${spec.label}`));
    });
    const legend = el("div", { class: "legend" });
    DATA.runs.forEach((run, r) => legend.append(el("span",
      { style: `--c:${RUN_COLOURS[r % RUN_COLOURS.length]}` }, `${run.name} (${run.path})`)));
    section.append(toggle, legend, box);
    renderCharts(box, axis);
  }
  function main() {
    document.body.append(el("h1", {}, "at2po view"),
      el("div", { class: "muted" }, DATA.runs.map((r) => r.name).join(" · ")));
    const curves = el("section", { id: "curves" }, el("h2", {}, "Curves"));
    const trees = el("section", { id: "trees" }, el("h2", {}, "Turn trees"));
    document.body.append(trees, curves);
    renderTrees(trees);
    renderCurves(curves);
  }
  main();
})();
