// `council eval --html`: draws every chart from the JSON report embedded in the page (#report-data), with uPlot.
// Nothing is computed here but positions and colours: each number shown is a field of that report.
(() => {
  "use strict";
  const doc = JSON.parse(document.getElementById("report-data").textContent);
  const charts = {};  // name -> uPlot instance: "0:seats", "0:strategies", "0:plans", "0:items", "0:categories"
  window.councilReport = { doc, charts };

  const C = { seat: "#4c78a8", greedy: "#e8590c", own: "#2f9e44", strategy: "#74a9cf", mean: "#7048e8",
              council: "#2f9e44", right: "#2f9e44", wrong: "#d9480f", front: "#1d2430" };
  // The per-category rows and the plans' votes take paletteColour(i) (council/assets/palette.js, the dashboard's
  // too, inlined before this script): no two share a colour however many there are. Votes skip the palette's
  // green (2): on the plans chart green is the council's line and the ringed plans.
  const voteColour = (j) => paletteColour(j < 2 ? j : j + 1);
  const WIDTH = Math.min(940, document.querySelector("main").clientWidth);
  const pct = (v) => (v == null ? "–" : (100 * v).toFixed(1) + "%");
  const num = (v, d = 0) => (v == null ? "–" : v.toFixed(d));

  function el(tag, attrs, ...kids) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    for (const kid of kids) node.append(kid);
    return node;
  }

  function table(id, head, rows) {
    const t = el("table", { id }, el("tr", {}, ...head.map((h, i) => el("th", { class: i ? "n" : "" }, h))));
    for (const row of rows) t.append(el("tr", {}, ...row.map((c, i) => el("td", { class: i ? "n" : "" }, c))));
    return t;
  }

  // A categorical bar chart: one bar per label (per-bar colours), optional reference lines, optional groups.
  // horizontal: labels on the left, the first at the top.
  function barChart(name, parent, { what, labels, values, colors, groups, lines = [], horizontal = false, title }) {
    const n = labels.length;
    const xs = labels.map((_, i) => i);
    const series = [{ label: what, value: (u, i) => (i == null ? "" : labels[i]) }];
    const data = [xs];
    const sets = groups || [{ label: title, values, colors }];
    const width = 0.8 / sets.length;
    sets.forEach((set, j) => {
      const fills = set.colors || xs.map(() => set.color);
      series.push({
        label: set.label, width: 0, fill: fills[0], stroke: fills[0], value: (u, v) => pct(v),
        points: { show: false },
        paths: uPlot.paths.bars({
          disp: {
            fill: { unit: 3, values: () => fills },
            x0: { unit: 1, values: () => xs.map((x) => x - 0.4 + j * width) },
            size: { unit: 1, values: () => [width * 0.9] },
          },
        }),
      });
      data.push(set.values);
    });
    for (const line of lines) {
      series.push({ label: line.label, stroke: line.color, width: 2, dash: [6, 4], value: (u, v) => pct(v),
                    points: { show: false } });
      data.push(xs.map(() => line.value));
    }
    const xAxis = { side: horizontal ? 3 : 2, splits: () => xs,
                    values: (u, splits) => splits.map((i) => labels[i] ?? ""),
                    size: horizontal ? Math.min(300, 12 + 7 * Math.max(...labels.map((l) => l.length))) : 40,
                    grid: { show: false }, gap: 4 };
    const yAxis = { side: horizontal ? 2 : 3, splits: () => [0, 0.2, 0.4, 0.6, 0.8, 1],
                    values: (u, splits) => splits.map((v) => Math.round(100 * v) + "%") };
    const opts = {
      width: WIDTH, height: horizontal ? 60 + 24 * n : 300,
      scales: { x: { time: false, range: [-0.5, n - 0.5], ori: horizontal ? 1 : 0, dir: horizontal ? -1 : 1 },
                y: { range: [0, 1], ori: horizontal ? 0 : 1 } },
      axes: [xAxis, yAxis], series, cursor: { points: { show: false }, drag: { x: false, y: false } },
    };
    const box = el("div", { class: "chart", id: "chart-" + name.replace(":", "-") });
    parent.append(box);
    charts[name] = new uPlot(opts, data, box);
    return charts[name];
  }

  function seatsChart(k, r, parent) {
    parent.append(el("h3", {}, "Accuracy per seat"));
    const samples = r.greedy_member != null && r.samples_mean != null;
    parent.append(el("p", { class: "caption" }, samples
      ? `Every seat is one model: the greedy seat (${r.greedy_member}) in orange, its samples in blue, the dashed ` +
        "lines the samples' mean and the council (its own vote, every member asked)."
      : "Each member alone; the dashed line is the council (its own vote, every member asked)."));
    const lines = [];
    if (samples) lines.push({ label: "samples' mean", value: r.samples_mean, color: C.mean });
    lines.push({ label: `council (${r.strategy})`, value: r.council_accuracy, color: C.council });
    barChart(`${k}:seats`, parent, {
      what: "seat", title: "accuracy", labels: r.members.map((m) => m.name), values: r.members.map((m) => m.accuracy),
      colors: r.members.map((m) => (m.name === r.greedy_member ? C.greedy : C.seat)), lines,
    });
  }

  function strategyLabel(s) {
    const how = s.signal == null ? s.strategy : `confidence ${s.signal}, T=${s.temperature}`;
    return `${how} · ${s.extract}`;
  }

  function strategiesChart(k, r, parent) {
    parent.append(el("h3", {}, "Accuracy per council strategy"));
    parent.append(el("p", { class: "caption" },
      `Re-scored offline from the same answers; green: the council's own vote (${r.strategy} on ${r.extract}). ` +
      "Dashed: what the council is compared with."));
    const lines = [];
    const greedy = r.members.find((m) => m.name === r.greedy_member);
    if (greedy) lines.push({ label: `greedy seat (${greedy.name})`, value: greedy.accuracy, color: C.greedy });
    if (r.samples_mean != null) lines.push({ label: "samples' mean", value: r.samples_mean, color: C.mean });
    if (!greedy && r.best_member_held_out != null)
      lines.push({ label: "best member, held out", value: r.best_member_held_out, color: C.greedy });
    const own = (s) => s.strategy === r.strategy && s.extract === r.extract && s.signal == null;
    barChart(`${k}:strategies`, parent, {
      what: "strategy", title: "accuracy", horizontal: true, labels: r.strategies.map(strategyLabel),
      values: r.strategies.map((s) => s.accuracy), colors: r.strategies.map((s) => (own(s) ? C.own : C.strategy)),
      lines,
    });
  }

  function plansChart(k, r, parent) {
    if (!r.plans || !r.plans.length) return;
    parent.append(el("h3", {}, `Accuracy against completion tokens: ${r.plans.length} plans`));
    parent.append(el("p", { class: "caption" },
      "Every member, early stop and every cascade {first, then, agreement}, each under each vote, replayed on " +
      "the recorded answers. The black line joins the Pareto front (no plan is as accurate for fewer tokens); " +
      "large points: on it and at least as accurate as the council (dashed)."));
    const plans = [...r.plans].sort((a, b) => a.tokens_per_item - b.tokens_per_item || b.accuracy - a.accuracy);
    const votes = [...new Set(plans.map((p) => p.vote))];
    const xs = plans.map((p) => p.tokens_per_item);
    const data = [xs];
    const series = [{ label: "tokens/item", value: (u, v) => (v == null ? "" : num(v)) }];
    votes.forEach((vote, j) => {
      const colour = voteColour(j);
      series.push({ label: vote, stroke: colour, fill: colour, width: 0, paths: () => null, value: (u, v) => pct(v),
                    points: { show: true, size: 6, width: 1, fill: colour } });
      data.push(plans.map((p) => (p.vote === vote ? p.accuracy : null)));
    });
    series.push({ label: "Pareto front", stroke: C.front, width: 1.5, spanGaps: true, value: (u, v) => pct(v),
                  points: { show: false } });
    data.push(plans.map((p) => (p.pareto ? p.accuracy : null)));
    series.push({ label: "cheapest that keep the council's accuracy", stroke: C.own, width: 0, paths: () => null,
                  value: (u, v) => pct(v), points: { show: true, size: 13, width: 2.5, fill: "transparent" } });
    data.push(plans.map((p) => (p.pareto && p.keeps_accuracy ? p.accuracy : null)));
    series.push({ label: `council, every member (${r.strategy})`, stroke: C.council, width: 1.5, dash: [6, 4],
                  points: { show: false }, value: (u, v) => pct(v) });
    data.push(xs.map(() => r.council_accuracy));
    const hover = el("div", { class: "hover", id: `hover-${k}-plans` });
    const box = el("div", { class: "chart", id: `chart-${k}-plans` });
    parent.append(box, hover);
    const accuracies = plans.map((p) => p.accuracy);
    const lo = Math.max(0, Math.floor(10 * Math.min(...accuracies, r.council_accuracy)) / 10 - 0.05);
    const hi = Math.min(1, Math.ceil(10 * Math.max(...accuracies, r.council_accuracy)) / 10 + 0.02);
    const u = new uPlot({
      width: WIDTH, height: 380, series,
      scales: { x: { time: false }, y: { range: [lo, hi] } },
      axes: [{ label: "completion tokens per item" },
             { label: "accuracy", values: (u, s) => s.map((v) => Math.round(100 * v) + "%") }],
      cursor: { drag: { x: true, y: false } },
      hooks: { setCursor: [(u) => {
        const p = nearestPlan(u, plans, votes);
        hover.textContent = p ? `${p.name}: ${pct(p.accuracy)} at ${num(p.tokens_per_item)} tokens/item, ` +
          `${num(p.members_per_item, 1)} members/item, ${pct(p.stopped_early)} stopped early` : "";
      }] },
    }, data, box);
    charts[`${k}:plans`] = u;
    const kept = plans.filter((p) => p.pareto && p.keeps_accuracy);
    parent.append(el("p", { class: "caption" }, kept.length
      ? "The cheapest plans that keep the council's accuracy:"
      : "No plan cheaper than every member keeps the council's accuracy."));
    const head = ["plan", "accuracy", "tokens/item", "of every member's", "s/item"];
    if (kept.length) parent.append(table(`kept-${k}`, head, kept.map((p) => [
      p.name, pct(p.accuracy), num(p.tokens_per_item), pct(p.token_share), num(p.ms_per_item / 1000, 1)])));
  }

  function nearestPlan(u, plans, votes) {
    // uPlot's cursor takes the nearest x only, and plans under different votes often spend the same tokens (one
    // x): name the shown plan nearest the pointer on both axes, in pixels.
    const { left, top, idx } = u.cursor;
    if (idx == null || left == null || left < 0) return null;
    let nearest = null, best = Infinity;
    for (const p of plans) {
      if (!u.series[1 + votes.indexOf(p.vote)].show) continue;  // its vote is hidden in the legend
      const d = (u.valToPos(p.tokens_per_item, "x") - left) ** 2 + (u.valToPos(p.accuracy, "y") - top) ** 2;
      if (d < best) [nearest, best] = [p, d];
    }
    return nearest;
  }

  function itemsChart(k, r, parent, vote) {
    if (!r.items_scored || !r.items_scored.length) return;
    parent.append(el("h3", {}, "Agreement per item"));
    parent.append(el("p", { class: "caption" },
      `The winner's share of the votes (${vote}, every member asked), items sorted by it; ` +
      "green: the council is right, red: wrong."));
    const items = [...r.items_scored].sort((a, b) => b.agreement - a.agreement || a.index - b.index);
    const xs = items.map((_, i) => i + 1);
    const dot = (color) => ({ stroke: color, fill: color, width: 0, paths: () => null, value: (u, v) => pct(v),
                              points: { show: true, size: 8, width: 1, fill: color } });
    const hover = el("div", { class: "hover", id: `hover-${k}-items` });
    const box = el("div", { class: "chart", id: `chart-${k}-items` });
    parent.append(box, hover);
    const seats = r.members.length;
    charts[`${k}:items`] = new uPlot({
      width: WIDTH, height: 260,
      series: [{ label: "rank" }, { label: "right", ...dot(C.right) }, { label: "wrong", ...dot(C.wrong) }],
      scales: { x: { time: false, range: [0, items.length + 1] }, y: { range: [0, 1.05] } },
      axes: [{ label: "items, by agreement" },
             { label: "agreement", values: (u, s) => s.map((v) => Math.round(100 * v) + "%") }],
      hooks: { setCursor: [(u) => {
        const it = items[u.cursor.idx];
        const what = it && it.category ? it.category : it ? `answer ${it.answer ?? "(none)"}` : "";
        hover.textContent = it ? `item ${it.index} (${what}): agreement ${pct(it.agreement)}, ` +
          `${it.correct ? "right" : "wrong"}; ${it.right_seats} of ${seats} seats right` : "";
      }] },
    }, [xs, items.map((i) => (i.correct ? i.agreement : null)), items.map((i) => (i.correct ? null : i.agreement))],
    box);
  }

  function categoriesChart(k, r, parent) {
    parent.append(el("h3", {}, "Accuracy per category"));
    parent.append(el("p", { class: "caption" },
      "BFCL's AST rules (irrelevance: no call is right). Each member alone, the council under each call vote " +
      "re-decided offline, and the oracle (some seat right)."));
    const rows = [...r.members, ...r.councils, r.oracle];
    const labels = [...r.categories, "overall"];
    barChart(`${k}:categories`, parent, {
      what: "category", labels, groups: rows.map((row, j) => ({
        label: row.name, color: paletteColour(j),
        values: labels.map((c) => (row.categories.find((x) => x.category === c) || {}).accuracy ?? null),
      })),
    });
    parent.append(table(`categories-${k}`, ["", ...labels], rows.map((row) => [row.name, ...labels.map((c) => {
      const s = row.categories.find((x) => x.category === c);
      return s ? `${pct(s.accuracy)} (${s.correct}/${s.items})` : "–";
    })])));
  }

  function facts(list) {
    return el("div", { class: "facts" }, ...list.map(([k, v]) => el("div", {}, k + ": ", el("b", {}, v))));
  }

  const main = document.querySelector("main");
  main.append(el("h1", {}, doc.title));
  doc.reports.forEach((r, k) => {
    const sec = el("section", { id: `report-${k}` });
    main.append(sec);
    sec.append(el("h2", {}, `${r.council} on ${r.data}: ${r.items} items`));
    if (r.kind === "function-calling") {
      const best = r.councils.length ? r.councils[0].categories.at(-1).accuracy : null;
      sec.append(facts([[(r.councils[0] || {}).name, pct(best)],
                        ["oracle", pct(r.oracle.categories.at(-1).accuracy)]]));
      categoriesChart(k, r, sec);
      itemsChart(k, r, sec, "the set vote: whole call sets");
      return;
    }
    const greedy = r.members.find((m) => m.name === r.greedy_member);
    sec.append(facts([[`council (${r.strategy} on ${r.extract})`, pct(r.council_accuracy)],
                      ...(greedy ? [["greedy seat", pct(greedy.accuracy)]] : []),
                      ...(r.samples_mean != null ? [["samples' mean", pct(r.samples_mean)]] : []),
                      ["oracle (some member right)", pct(r.oracle)]]));
    seatsChart(k, r, sec);
    strategiesChart(k, r, sec);
    plansChart(k, r, sec);
    itemsChart(k, r, sec, `${r.strategy} on ${r.extract}`);
  });
  window.councilReport.drawnMs = performance.now();  // for bench/report_page.py: every chart drawn
  document.body.dataset.drawn = Object.keys(charts).length;
})();
