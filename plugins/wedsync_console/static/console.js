// WedSync Backup console: a plain ES module over the console API (/wedsync-backup/api/...).
import { h, replace, utc, timeEl, duration, bytes, num, badge, table } from "./dom.js";

const BASE = new URL(".", document.baseURI.replace(/\/?(\?.*)?$/, "/"));
const FAST = 3000;
const SLOW = 30000;
const HOUR = 3600 * 1000;
const state = { me: null, status: null, points: null, history: null, pickedMs: null, watching: new Map(), timer: null };

const $ = (id) => document.getElementById(id);

function announce(text) {
  const el = $("announcer");
  el.textContent = "";
  setTimeout(() => { el.textContent = text; }, 50);
}

async function api(path, options = {}) {
  const res = await fetch(new URL(`api/${path}`, BASE), {
    credentials: "same-origin",
    headers: { Accept: "application/json", "Content-Type": "application/json" },
    ...options,
  });
  let body = null;
  try { body = await res.json(); } catch { body = null; }
  if (res.status === 401) showLogin();
  return { status: res.status, ok: res.ok, body, retryAfter: res.headers.get("Retry-After") };
}

function showLogin() {
  const next = encodeURIComponent(window.top === window ? location.href : location.pathname);
  const notice = replace("notice", "You are not logged in to Airflow. ", h("a", { href: `/auth/login?next=${next}`, target: "_top" }, "Log in"), " to see the backups.");
  notice.classList.add("error");
  notice.hidden = false;
}

function problem(res) {
  const b = res.body || {};
  const items = b.errors ? Object.entries(b.errors).map(([k, v]) => h("li", {}, h("strong", {}, k), `: ${v}`)) : [];
  const head = {
    401: "Not logged in (401)", 403: "Not allowed (403)", 422: "Invalid input (422): nothing was started",
    429: `Rate limit reached (429): try again in ${duration(Number(res.retryAfter))}`,
  }[res.status] || `Failed (${res.status})`;
  return h("div", { class: "err" }, h("p", {}, h("strong", {}, head)), b.detail ? h("p", {}, b.detail) : null, items.length ? h("ul", {}, items) : null);
}

function markInvalid(form, res) {
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  const errors = (res.body && res.body.errors) || {};
  for (const name of Object.keys(errors)) {
    const el = form.querySelector(`[name="${CSS.escape(name)}"]`);
    if (el) el.setAttribute("aria-invalid", "true");
  }
}

// --- tier cards, summary, progress ---------------------------------------------------------------------------
const LEVEL_TEXT = { ok: "Healthy", warning: "Warning", critical: "Critical", not_deployed: "Not deployed" };

function nextRun(t) {
  if (t.paused) return "paused";
  if (!t.next_run) return "—";
  return Date.parse(t.next_run) < Date.now() ? ["due since ", timeEl(t.next_run)] : timeEl(t.next_run);
}

function renderTiers(s) {
  replace("tiers", s.tiers.map((t) => h("article", { class: `card tier-${t.health}`, "aria-labelledby": `tier-${t.tier}` },
    h("h3", { id: `tier-${t.tier}` }, t.title),
    badge(t.health, LEVEL_TEXT[t.health] || t.health),
    h("p", {}, t.health_text),
    h("dl", {},
      h("dt", {}, "Newest point"), h("dd", {}, t.newest_point ? [timeEl(t.newest_point.at), h("br"), h("small", {}, t.newest_point.backup_id)] : "none"),
      h("dt", {}, "Age"), h("dd", {}, t.age_text ? `${t.age_text} (${num(t.age_seconds)} s; RPO ${num(t.rpo_seconds)} s)` : `— (RPO ${t.rpo_text})`),
      h("dt", {}, "Last run"), h("dd", {}, t.last_run ? [badge(t.last_run.state), " ", timeEl(t.last_run.start_date)] : "none"),
      h("dt", {}, "Next run"), h("dd", {}, nextRun(t)),
    ))));
  const r = s.success_rate_30d || {};
  const rule = s.rule_321;
  replace("summary",
    `Last 30 days: ${num(r.completed)} ${r.completed === 1 ? "backup" : "backups"} completed, ${num(r.failed)} failed`,
    r.rate === null || r.rate === undefined ? "." : ` (${Math.round(r.rate * 1000) / 10}% success).`,
    rule ? ` 3-2-1 rule: ${rule.compliant ? "compliant" : "NOT compliant"} (${rule.copies} copies, ${(rule.media || []).length} media, ${(rule.offsite || []).length} offsite)${rule.problems && rule.problems.length ? ": " + rule.problems.join("; ") : ""}.` : " 3-2-1 rule: no verdict recorded yet.",
    s.last_drill ? ` Last drill: ${s.last_drill.status} ${utc(s.last_drill.tested_at)}.` : " No restore drill recorded yet.");
}

function renderProgress(s) {
  const runs = s.active_runs || [];
  if (!runs.length) { replace("progress", h("p", {}, "Nothing is running.")); return; }
  replace("progress", runs.map((r) => h("div", { class: "run" },
    h("p", {}, badge(r.state), " ", h("strong", {}, r.dag_id), " ", h("small", {}, r.run_id)),
    h("p", {}, `Stage: ${r.stage} · elapsed ${duration(r.elapsed_seconds)} · ${r.tasks_done} of ${r.tasks_total || "?"} tasks done`),
    h("progress", { max: Math.max(1, r.tasks_total), value: r.tasks_done, "aria-label": `${r.dag_id} progress: ${r.tasks_done} of ${r.tasks_total} tasks done` }))));
}

// --- the recovery-point timeline --------------------------------------------------------------------------------
function ranges() {
  return (state.points ? state.points.chains : []).map((c) => ({ from: c.from, to: c.to, fromMs: Date.parse(c.from), toMs: Date.parse(c.to), id: c.full_backup_id }));
}

/** The exact moment to restore to for a picked instant: inside a range as is, else the nearest range end. */
function restorable(ms) {
  const rs = ranges();
  if (!rs.length) return null;
  for (const r of rs) {
    if (ms >= r.fromMs && ms <= r.toMs) {
      if (ms === r.fromMs) return { iso: r.from, exact: true, chain: r.id };
      if (ms === r.toMs) return { iso: r.to, exact: true, chain: r.id };
      return { iso: new Date(ms).toISOString(), exact: true, chain: r.id };
    }
  }
  let best = null;
  for (const r of rs) {
    for (const [edge, iso] of [[r.fromMs, r.from], [r.toMs, r.to]]) {
      const d = Math.abs(edge - ms);
      if (!best || d < best.d) best = { d, iso, chain: r.id, ms: edge };
    }
  }
  return { iso: best.iso, exact: false, chain: best.chain, ms: best.ms };
}

function describeMoment(ms) {
  const r = restorable(ms);
  if (!r) return `${utc(new Date(ms).toISOString())}: no restorable moment yet`;
  return r.exact ? `${utc(new Date(ms).toISOString())}: restorable (chain of ${r.chain})` : `${utc(new Date(ms).toISOString())}: not covered; nearest restorable moment ${utc(r.iso, true)}`;
}

function pick(ms, exactIso = null) {
  const r = exactIso ? { iso: exactIso, exact: true } : restorable(ms);
  state.pickedMs = ms;
  updateCursor();
  if (!r) { announce("No restorable moment yet: run a full backup first."); return; }
  $("r-mode").value = "point_in_time";
  $("r-time").value = r.iso;
  $("r-point").value = "";
  $("r-dry").checked = true;
  syncRestoreForm();
  const text = r.exact ? `Restore dry run filled for ${utc(r.iso, true)}.` : `That moment is not covered; filled the nearest restorable moment, ${utc(r.iso, true)}.`;
  replace("restore-result", h("p", { class: "picked" }, text, " Check the target connection and reason, then run the dry run."));
  announce(text);
}

function updateCursor() {
  const track = document.querySelector(".track");
  if (!track || !state.points) return;
  const since = Date.parse(state.points.since);
  const until = Date.parse(state.points.until);
  const ms = state.pickedMs ?? until;
  track.setAttribute("aria-valuenow", String(Math.round(ms / 1000)));
  track.setAttribute("aria-valuetext", describeMoment(ms));
  const cursor = document.querySelector(".cursor");
  cursor.style.left = `${((ms - since) / (until - since)) * 100}%`;
  cursor.hidden = state.pickedMs === null;
}

function renderTimeline(p) {
  const since = Date.parse(p.since);
  const until = Date.parse(p.until);
  const pct = (iso) => Math.min(100, Math.max(0, ((Date.parse(iso) - since) / (until - since)) * 100));
  const marks = [];
  for (const c of p.chains) {
    marks.push(h("div", { class: "seg chain", style: { left: `${pct(c.from)}%`, width: `${Math.max(0.3, pct(c.to) - pct(c.from))}%` } }));
    for (const pt of c.points) marks.push(h("div", { class: `mark ${pt.type === "incremental" ? "incremental" : "full"}`, style: { left: `${pct(pt.at)}%` } }));
  }
  for (const g of p.gaps) marks.push(h("div", { class: "seg gap", style: { left: `${pct(g.from)}%`, width: `${Math.max(0.3, pct(g.to) - pct(g.from))}%` } }));
  for (const a of p.archives) marks.push(h("div", { class: "mark archive", style: { left: `${pct(a.at)}%` } }));
  for (const n of p.named) marks.push(h("div", { class: "mark named", style: { left: `${pct(n.at)}%` } }));
  for (const d of p.drills) marks.push(h("div", { class: "mark drill", style: { left: `${pct(d.tested_at)}%` } }));
  for (const r of p.restores) marks.push(h("div", { class: "mark restore", style: { left: `${pct(r.started_at)}%` } }));
  const axis = [0, 0.25, 0.5, 0.75, 1].map((f) => h("span", { class: "axis", style: f === 1 ? { right: ".3rem" } : { left: `calc(${f * 100}% + .3rem)` } }, utc(new Date(since + f * (until - since)).toISOString()).slice(5, 10)));
  const track = h("div", {
    class: "track", role: "slider", tabindex: "0", "aria-label": "Moment to restore to",
    "aria-describedby": "timeline-hint", "aria-valuemin": String(Math.round(since / 1000)), "aria-valuemax": String(Math.round(until / 1000)),
    "aria-valuenow": String(Math.round(until / 1000)), "aria-valuetext": "now",
    onclick: (e) => { const box = e.currentTarget.getBoundingClientRect(); pick(since + ((e.clientX - box.left) / box.width) * (until - since)); },
    onkeydown: (e) => {
      const now = state.pickedMs ?? until;
      const step = { ArrowLeft: -HOUR, ArrowRight: HOUR, ArrowDown: -HOUR, ArrowUp: HOUR, PageDown: -24 * HOUR, PageUp: 24 * HOUR }[e.key];
      if (step) { state.pickedMs = Math.min(until, Math.max(since, now + step)); updateCursor(); e.preventDefault(); }
      else if (e.key === "Home") { state.pickedMs = since; updateCursor(); e.preventDefault(); }
      else if (e.key === "End") { state.pickedMs = until; updateCursor(); e.preventDefault(); }
      else if (e.key === "Enter" || e.key === " ") { pick(now); e.preventDefault(); }
    },
  });
  replace("timeline", ...marks, ...axis, h("div", { class: "cursor", hidden: true }), track);
  updateCursor();
  renderPointLists(p);
}

function renderPointLists(p) {
  const pickBtn = (iso, what) => h("button", { type: "button", class: "plain", onclick: () => pick(Date.parse(iso), iso) },
    "Restore to this", h("span", { class: "visually-hidden" }, ` moment: ${what} (${utc(iso, true)})`));
  const chains = table("Restorable ranges", ["Full backup", "From", "To", "Incrementals", "Action"],
    p.chains.map((c) => [c.full_backup_id, timeEl(c.from, true), timeEl(c.to, true), num(c.incrementals), pickBtn(c.to, `the end of ${c.full_backup_id}'s range`)]),
    "No restorable moment in the last 30 days: run a full backup.");
  const gaps = p.gaps.length ? h("ul", {}, p.gaps.map((g) => h("li", {}, `Gap ${utc(g.from)} to ${utc(g.to)} (${num(g.minutes)} min): ${g.why}`))) : h("p", {}, "No gaps between chains.");
  const named = table("Named recovery points", ["Label", "Moment", "Position (LSN)", "By", "Action"],
    p.named.map((n) => [n.label, timeEl(n.at, true), n.lsn, n.created_by, pickBtn(n.at, `"${n.label}"`)]), "No named recovery points.");
  const archives = p.archives.length ? h("p", {}, `Archives: ${p.archives.map((a) => `${a.backup_id} (${utc(a.at)})`).join(", ")}`) : null;
  const restores = p.restores.length ? table("Restores", ["Run", "Status", "Mode", "Started", "Dry run"],
    p.restores.slice(0, 10).map((r) => [r.run_id || String(r.id), badge(r.status), r.mode || "—", timeEl(r.started_at), r.dry_run ? "yes" : "no"]), "") : null;
  replace("points", h("h3", {}, "Restorable ranges"), chains, h("h3", {}, "Gaps"), gaps, h("h3", {}, "Named recovery points"), named, archives, restores ? [h("h3", {}, "Recent restores"), restores] : null);
  const select = $("r-point");
  const current = select.value;
  select.replaceChildren(h("option", { value: "" }, "(none)"), ...p.named.map((n) => h("option", { value: n.label }, `${n.label} (${utc(n.at)})`)));
  select.value = current;
}

// --- history, storage, drills -------------------------------------------------------------------------------------
function renderHistory(page) {
  replace("runs", table("Recent backups", ["Backup", "Type", "Status", "Started", "Took", "Size (stored)", "Ratio", "Covers", "Key", "Copies"],
    page.items.map((b) => [
      b.backup_id, b.backup_type, badge(b.status, b.status.replace("_", " ")), timeEl(b.started_at),
      b.completed_at ? duration((Date.parse(b.completed_at) - Date.parse(b.started_at)) / 1000) : "—",
      `${bytes(b.size_bytes)} (${bytes(b.compressed_size_bytes)})`, b.compression_ratio ? `${b.compression_ratio}×` : "—",
      b.backup_type === "incremental" ? "the changes since the previous backup" : `${num(b.platform.weddings)} weddings, ${num(b.platform.guests)} guests, ${num(b.platform.photos)} photos, ${num(b.platform.timeline_events)} timeline events`,
      b.key_id || "—",
      { cls: "copies", node: [h("strong", {}, `${b.copies_verified} of ${b.replicas.length} verified`),
        h("ul", {}, b.replicas.map((c) => h("li", {}, `${c.verified ? "✓" : "✕"} ${c.target_name}: ${c.verified ? "verified " + utc(c.verified_at) : "NOT verified" + (c.error ? " (" + c.error + ")" : "")}`)))] },
    ]), "No backups recorded yet."));
}

function renderStorage(s) {
  replace("storage", table("Storage per target", ["Target", "Kind", "Site", "Used", "Backups", "Health", "Last verified"],
    s.targets.map((t) => [t.target_name, `${t.kind} (${t.medium})`, t.site, bytes(t.bytes_used), num(t.backups), badge(t.healthy ? "ok" : "critical", t.health_text), timeEl(t.last_verified_at)]),
    "No copies recorded yet."));
}

function renderDrills(p) {
  replace("drills", table("Restore drills", ["Backup", "When", "Result", "RTO", "Rows checked"],
    p.drills.map((d) => [d.backup_id, timeEl(d.tested_at), badge(d.status), duration(d.rto_seconds), num(d.rows_checked)]),
    "No restore drill recorded in the last 30 days."));
}

// --- loading and polling --------------------------------------------------------------------------------------------
async function load() {
  const [me, st, pts, hist] = await Promise.all([api("me"), api("status"), api("recovery-points"), api("history?limit=20")]);
  if (me.ok) {
    state.me = me.body;
    replace("who", `Signed in as ${me.body.user} (role: ${me.body.roles.join(", ") || "none"})`);
    if (!me.body.can_act) {
      const n = replace("notice", "You can view the backups. Starting backups and restores and marking recovery points needs the Admin role.");
      n.classList.remove("error");
      n.hidden = false;
    }
  } else if (me.status === 403) {
    const n = replace("notice", (me.body && me.body.detail) || "You may not view the backups.");
    n.classList.add("error"); n.hidden = false;
  }
  if (st.ok) { state.status = st.body; renderTiers(st.body); renderProgress(st.body); renderStorage(st.body); }
  if (pts.ok) { state.points = pts.body; renderTimeline(pts.body); renderDrills(pts.body); }
  if (hist.ok) { state.history = hist.body; renderHistory(hist.body); }
  replace("refreshed", `Updated ${utc(new Date().toISOString(), true)}`);
  schedule();
}

function schedule() {
  clearTimeout(state.timer);
  const busy = (state.status && state.status.active_runs.length) || state.watching.size;
  state.timer = setTimeout(() => load().catch(() => schedule()), busy ? FAST : SLOW);
}

async function watchRestore(runId) {
  state.watching.set(runId, true);
  for (;;) {
    const res = await api(`restores/${encodeURIComponent(runId)}`);
    if (!res.ok) { replace("restore-result", problem(res)); break; }
    const r = res.body;
    const done = ["success", "failed"].includes(r.state);
    const parts = [h("p", {}, badge(r.state), ` Run ${r.run_id}: stage ${r.stage}, elapsed ${duration(r.elapsed_seconds)}`)];
    if (done && r.event && r.event.error) parts.push(h("p", { class: "err" }, `Refused: ${r.event.error}`));
    if (done && r.plan) {
      const p = r.plan;
      parts.push(h("p", { class: "ok" }, `Plan: restore ${p.backup_id || "?"} from ${(r.event && r.event.from_target) || "?"} into ${(r.event && r.event.target_conn_id) || "?"}` +
        (p.tables !== undefined ? ` (${num(p.tables)} tables, ${num(p.rows)} rows, ${bytes(p.plain_bytes)})` : "") +
        (p.incremental_backup_ids && p.incremental_backup_ids.length ? `, then replay ${p.incremental_backup_ids.length} incremental(s) up to ${utc(p.until, true)}` : "") +
        (p.data_loss_minutes !== undefined && p.data_loss_minutes !== null ? `; data loss ${p.data_loss_minutes} min` : "") + (r.event && r.event.dry_run ? " (dry run: nothing was touched)" : "")));
      parts.push(h("pre", { class: "plan", tabindex: "0", "aria-label": "The restore plan" }, JSON.stringify(p, null, 2)));
    }
    replace("restore-result", parts);
    if (done) { announce(`Restore run ${r.state === "success" ? "finished" : "failed"}`); break; }
    await new Promise((ok) => setTimeout(ok, FAST));
  }
  state.watching.delete(runId);
}

// --- forms ---------------------------------------------------------------------------------------------------------------
function syncRestoreForm() {
  const mode = $("r-mode").value;
  $("r-time-row").hidden = mode !== "point_in_time";
  $("r-backup-row").hidden = mode !== "backup_id";
  const dry = $("r-dry").checked;
  $("r-confirm-row").hidden = dry;
  $("r-phrase").textContent = `RESTORE ${$("r-target").value || "<target>"}`;
  $("r-submit").textContent = dry ? "Run dry run" : "Restore now";
}

async function submitBackup(e) {
  e.preventDefault();
  const form = e.currentTarget;
  const type = $("b-type").value;
  const body = { type, reason: $("b-reason").value, priorityLevel: $("b-priority").value,
    includeComponents: [...form.querySelectorAll("input[name=components]:checked")].map((c) => c.value) };
  if (type === "wedding") body.weddingIds = $("b-weddings").value.split(",").map((s) => s.trim()).filter(Boolean);
  replace("backup-result", h("p", {}, "Starting…"));
  const res = await api("backups", { method: "POST", body: JSON.stringify(body) });
  markInvalid(form, res);
  if (!res.ok) { replace("backup-result", problem(res)); announce("The backup was not started"); return; }
  const b = res.body;
  replace("backup-result", h("div", { class: "ok" },
    h("p", {}, h("strong", {}, "Backup started. "), `Run ${b.run_id}` + (b.backup_id ? `, backup ${b.backup_id}` : "")),
    h("p", {}, `Estimated duration: ${b.estimated_duration_seconds ? duration(b.estimated_duration_seconds) : "unknown (no earlier run)"}; components: ${b.scheduled_components.join(", ")}.`),
    h("p", {}, `Will create: ${b.recovery_points.join("; ")}.`), b.warning ? h("p", { class: "err" }, b.warning) : null));
  announce("Backup started; its progress is shown under Running now");
  load();
}

async function submitRestore(e) {
  e.preventDefault();
  const form = e.currentTarget;
  const mode = $("r-mode").value;
  const body = { mode, from_target: $("r-from").value, target_conn_id: $("r-target").value.trim(), reason: $("r-reason").value, dry_run: $("r-dry").checked };
  if (mode === "point_in_time") {
    if ($("r-point").value) body.recovery_point = $("r-point").value;
    else body.target_time = $("r-time").value.trim() || null;
  }
  if (mode === "backup_id") body.backup_id = $("r-backup").value.trim() || null;
  if (!body.dry_run) body.confirm = $("r-confirm").value;
  replace("restore-result", h("p", {}, "Submitting…"));
  const res = await api("restores", { method: "POST", body: JSON.stringify(body) });
  markInvalid(form, res);
  if (!res.ok) { replace("restore-result", problem(res)); announce("The restore was not started"); return; }
  replace("restore-result", h("p", {}, `Restore run ${res.body.run_id} queued${res.body.dry_run ? " (dry run)" : ""}.`));
  announce("Restore run queued");
  watchRestore(res.body.run_id);
}

async function submitPoint(e) {
  e.preventDefault();
  const form = e.currentTarget;
  const res = await api("recovery-points", { method: "POST", body: JSON.stringify({ label: $("p-label").value }) });
  markInvalid(form, res);
  if (!res.ok) { replace("point-result", problem(res)); return; }
  replace("point-result", h("p", { class: "ok" }, `Recorded "${res.body.label}" at ${utc(res.body.recovery_timestamp, true)} (position ${res.body.wal_position}).`));
  announce("Recovery point recorded");
  load();
}

function init() {
  $("reload").addEventListener("click", () => load());
  $("b-type").addEventListener("change", () => { $("b-wedding-row").hidden = $("b-type").value !== "wedding"; });
  for (const id of ["r-mode", "r-dry", "r-target"]) $(id).addEventListener(id === "r-target" ? "input" : "change", syncRestoreForm);
  $("backup-form").addEventListener("submit", submitBackup);
  $("restore-form").addEventListener("submit", submitRestore);
  $("point-form").addEventListener("submit", submitPoint);
  syncRestoreForm();
  load().catch((err) => {
    const n = replace("notice", `The console could not load: ${err}`);
    n.classList.add("error"); n.hidden = false;
  });
}

init();
