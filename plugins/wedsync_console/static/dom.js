// Small DOM and formatting helpers for the console. Text always goes in as text, never as HTML.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "style") Object.assign(el.style, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function replace(id, ...children) {
  const el = document.getElementById(id);
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
  return el;
}

const pad = (n) => String(n).padStart(2, "0");

/** "2026-11-29 12:36 UTC" */
export function utc(iso, seconds = false) {
  if (!iso) return "—";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const s = `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}`;
  return `${s}${seconds ? ":" + pad(d.getUTCSeconds()) : ""} UTC`;
}

export function timeEl(iso, seconds = false) {
  return iso ? h("time", { datetime: iso }, utc(iso, seconds)) : "—";
}

/** The largest two units: "3 d 4 h", "2 h 5 min", "12 min", "40 s". */
export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  let s = Math.max(0, Math.round(seconds));
  const d = Math.floor(s / 86400); s -= d * 86400;
  const hr = Math.floor(s / 3600); s -= hr * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  if (d) return `${d} d ${hr} h`;
  if (hr) return `${hr} h ${m} min`;
  if (m) return `${m} min ${s} s`;
  return `${s} s`;
}

export function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0; let v = Number(n);
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function num(n) {
  return n === null || n === undefined ? "—" : Number(n).toLocaleString("en");
}

/** A status badge: a word and a shape as well as a colour. */
export function badge(level, text) {
  const cls = { ok: "s-ok", success: "s-ok", completed: "s-ok", passed: "s-ok", planned: "s-ok",
    warning: "s-warning", queued: "s-run", running: "s-run", in_progress: "s-run", pending: "s-run",
    critical: "s-critical", failed: "s-critical", refused: "s-critical", not_deployed: "s-off" }[level] || "s-off";
  return h("span", { class: `badge ${cls}` }, text || level);
}

export function table(caption, headers, rows, empty) {
  if (!rows.length) return h("p", {}, empty);
  return h("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": `${caption} table` },
    h("table", {},
      h("caption", { class: "visually-hidden" }, caption),
      h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
      h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c, i) => (i === 0 ? h("th", { scope: "row" }, c) : h("td", c && c.cls ? { class: c.cls } : {}, c && c.cls ? c.node : c))))))));
}
