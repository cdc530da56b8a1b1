// A workflow's state diagram as SVG, built through the DOM (never from markup): states in layers
// from the initial state, moves as arrows. Every name comes from the API and is set as text.

const SVG = "http://www.w3.org/2000/svg";
const NODE_W = 152;
const NODE_H = 46;
const GAP_X = 34;
const GAP_Y = 22;
const PAD = 16;
const ARC = 30;

function el(name, attrs = {}, text) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function shorten(text, max) {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

// Layers: the longest way from the initial state over the moves that do not go back (a depth
// first walk finds those), so that final states sit right of every state that leads to them;
// states nothing reaches go last.
function layers(workflow, edges) {
  const out = new Map();
  for (const e of edges) {
    if (!out.has(e.source)) out.set(e.source, []);
    out.get(e.source).push(e.dest);
  }
  const back = new Set();
  const seen = new Set();
  const onStack = new Set();
  const order = [];
  const walk = (name) => {
    seen.add(name);
    onStack.add(name);
    for (const next of out.get(name) || []) {
      if (onStack.has(next)) back.add(`${name}\u0000${next}`);
      else if (!seen.has(next)) walk(next);
    }
    onStack.delete(name);
    order.push(name);
  };
  if (workflow.initial) walk(workflow.initial);
  const depth = new Map([[workflow.initial, 0]]);
  for (const name of order.reverse()) {
    if (!depth.has(name)) continue;
    for (const next of out.get(name) || []) {
      if (back.has(`${name}\u0000${next}`)) continue;
      depth.set(next, Math.max(depth.get(next) ?? 0, depth.get(name) + 1));
    }
  }
  const deepest = Math.max(0, ...depth.values());
  for (const s of workflow.states) if (!depth.has(s.name)) depth.set(s.name, deepest + 1);
  const columns = [];
  for (const s of workflow.states) {
    const d = depth.get(s.name);
    while (columns.length <= d) columns.push([]);
    columns[d].push(s.name);
  }
  return columns.filter((c) => c.length);
}

// The moves between states, one per (source, dest), with the events that take them.
export function movesOf(workflow) {
  const found = new Map();
  for (const rule of workflow.rules) {
    if (!rule.dest || rule.dest === rule.source) continue;
    const id = `${rule.source}\u0000${rule.dest}`;
    if (!found.has(id)) found.set(id, { source: rule.source, dest: rule.dest, events: [] });
    const name = rule.event === "saga.DeadlineExpired" ? "deadline" : rule.event === "saga.CancelRequested" ? "cancel" : rule.event;
    found.get(id).events.push(name);
  }
  return [...found.values()];
}

// One journal entry may move a saga over several states (parked events applied on arrival): where
// two states in a row have no move between them, the shortest way between them fills the gap.
function through(edges, path) {
  const out = new Map();
  for (const e of edges) {
    if (!out.has(e.source)) out.set(e.source, []);
    out.get(e.source).push(e.dest);
  }
  const walked = path.slice(0, 1);
  for (let i = 1; i < path.length; i++) {
    const [from, to] = [path[i - 1], path[i]];
    const before = new Map([[from, null]]);
    const queue = [from];
    while (queue.length && !before.has(to)) {
      const at = queue.shift();
      for (const next of out.get(at) || []) {
        if (!before.has(next)) {
          before.set(next, at);
          queue.push(next);
        }
      }
    }
    const between = [];
    if (before.has(to)) for (let at = before.get(to); at !== null && at !== from; at = before.get(at)) between.unshift(at);
    walked.push(...between, to);
  }
  return walked;
}

// workflow: GET /workflows/{name}; options: current (a state), path (states in the order the saga
// went through them), counts (state -> number shown in the node), label (the SVG's accessible name).
export function diagram(workflow, { current = null, path = [], counts = null, label = "" } = {}) {
  const edges = movesOf(workflow);
  const columns = layers(workflow, edges);
  const position = new Map();
  const tallest = Math.max(...columns.map((c) => c.length));
  // room above and below the boxes for the arcs of long and backward moves
  const height = PAD * 2 + 2 * ARC + tallest * NODE_H + (tallest - 1) * GAP_Y;
  columns.forEach((column, x) => {
    const top = ARC + PAD + (tallest - column.length) * (NODE_H + GAP_Y) / 2;
    column.forEach((name, y) => {
      position.set(name, { x: PAD + x * (NODE_W + GAP_X), y: top + y * (NODE_H + GAP_Y), column: x });
    });
  });
  const width = PAD * 2 + columns.length * NODE_W + (columns.length - 1) * GAP_X;
  const walked = through(edges, path);
  const taken = new Set();
  for (let i = 1; i < walked.length; i++) taken.add(`${walked[i - 1]}\u0000${walked[i]}`);
  const visited = new Set(walked);

  const svg = el("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label });
  svg.append(el("title", {}, label));
  const defs = el("defs");
  for (const kind of ["plain", "taken"]) {
    const marker = el("marker", {
      id: `arrow-${kind}`, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 9, markerHeight: 9, markerUnits: "userSpaceOnUse", orient: "auto-start-reverse",
      class: kind,
    });
    marker.append(el("path", { d: "M 0 0 L 10 5 L 0 10 z" }));
    defs.append(marker);
  }
  svg.append(defs);

  const edgeLayer = el("g", { class: "edges" });
  for (const edge of edges) {
    const from = position.get(edge.source);
    const to = position.get(edge.dest);
    if (!from || !to) continue;
    const isTaken = taken.has(`${edge.source}\u0000${edge.dest}`);
    const back = to.column <= from.column;
    const g = el("g", { class: `edge${isTaken ? " taken" : ""}${back ? " back" : ""}` });
    g.dataset.source = edge.source;
    g.dataset.dest = edge.dest;
    let d;
    if (!back && to.column - from.column === 1) {
      const x1 = from.x + NODE_W, y1 = from.y + NODE_H / 2, x2 = to.x, y2 = to.y + NODE_H / 2;
      const mid = (x1 + x2) / 2;
      d = `M ${x1} ${y1} C ${mid} ${y1}, ${mid} ${y2}, ${x2} ${y2}`;
    } else if (!back) {
      // over several columns: an arc above the boxes between, not through them
      const x1 = from.x + NODE_W / 2, y1 = from.y, x2 = to.x + NODE_W / 2 - 10, y2 = to.y;
      const rise = Math.min(y1, y2) - GAP_Y - 10;
      d = `M ${x1} ${y1} C ${x1} ${rise}, ${x2} ${rise}, ${x2} ${y2}`;
    } else {
      // backwards or within a column: a loop below the boxes
      const x1 = from.x + NODE_W / 2, y1 = from.y + NODE_H, x2 = to.x + NODE_W / 2 + 10, y2 = to.y + NODE_H;
      const dip = Math.max(y1, y2) + GAP_Y;
      d = `M ${x1} ${y1} C ${x1} ${dip}, ${x2} ${dip}, ${x2} ${y2}`;
    }
    g.append(el("path", { d, "marker-end": `url(#arrow-${isTaken ? "taken" : "plain"})` }));
    g.append(el("title", {}, `${edge.source} → ${edge.dest}: ${edge.events.join(", ")}`));
    edgeLayer.append(g);
  }
  svg.append(edgeLayer);

  const nodeLayer = el("g", { class: "nodes" });
  for (const state of workflow.states) {
    const at = position.get(state.name);
    const classes = ["node", `status-${state.status}`];
    if (state.final) classes.push("final");
    if (visited.has(state.name)) classes.push("visited");
    if (state.name === current) classes.push("current");
    const g = el("g", { class: classes.join(" "), transform: `translate(${at.x} ${at.y})` });
    g.dataset.state = state.name;
    g.append(el("rect", { width: NODE_W, height: NODE_H, rx: state.final ? 18 : 6 }));
    const hasCount = counts !== null;
    g.append(el("text", { x: 10, y: hasCount ? 19 : 28 }, shorten(state.name, 20)));
    if (hasCount) {
      const n = counts[state.name] || 0;
      g.append(el("text", { x: 10, y: 37, class: n ? "count" : "" }, `${n} saga${n === 1 ? "" : "s"}`));
    }
    const details = [`${state.name} (${state.status}${state.final ? ", final" : ""})`];
    if (state.deadline_seconds) details.push(`deadline ${state.deadline_seconds} s → ${state.on_deadline}`);
    if (state.sends.length) details.push(`sends ${state.sends.join(", ")}`);
    if (state.name === current) details.push("the saga is here");
    g.append(el("title", {}, details.join("; ")));
    nodeLayer.append(g);
  }
  svg.append(nodeLayer);
  return svg;
}
