/* PoseLoop ops console: sign-in, the API client, navigation, and the models, pool and audit-log pages.
 * jobs.js and try.js add their pages to PoseLoop.pages. Plain DOM, no framework, nothing from the network
 * but this API (the server's Content-Security-Policy allows only this origin).
 *
 * Every API answer is rendered with textContent / DOM nodes (never innerHTML): reasons, actor names and job
 * logs are free text written by callers.
 */
(function () {
  'use strict';

  const TOKEN_KEY = 'poseloop.token';
  const ROOT = '../'; // the console is <root>/ui/, the API <root>/v1/… (works behind a path prefix)
  const FINAL = ['succeeded', 'failed', 'cancelled'];

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  /** fetch an API path with the bearer token; JSON in (`json`) and out, or with `blob` an object URL of the body
   * (image routes: an <img src> cannot send the token); errors as ApiError(status, code). */
  async function api(path, options) {
    const opts = options || {};
    const headers = new Headers(opts.headers || {});
    const token = opts.token || sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.set('Authorization', 'Bearer ' + token);
    let body = opts.body;
    if (opts.json !== undefined) {
      headers.set('Content-Type', 'application/json');
      body = JSON.stringify(opts.json);
    }
    let response;
    try {
      response = await fetch(ROOT + path, { method: opts.method || 'GET', headers, body, cache: 'no-store' });
    } catch (err) {
      throw new ApiError(0, 'unreachable', 'the API did not answer (' + err.message + ')');
    }
    if (response.ok && opts.blob) return URL.createObjectURL(await response.blob());
    const text = await response.text();
    let doc = null;
    try { doc = text ? JSON.parse(text) : null; } catch (_) { doc = null; }
    if (!response.ok) {
      const error = (doc && doc.error) || { code: 'http_' + response.status, message: response.statusText };
      if (response.status === 401 && !opts.token) signOut('The API refused the token: ' + error.message);
      throw new ApiError(response.status, error.code, error.message);
    }
    return doc;
  }

  // ------------------------------------------------------------------ DOM helpers
  const $ = (selector) => document.querySelector(selector);

  /** el('td', {class: 'x', onclick: f}, child, 'text', …): an element; strings become text nodes. */
  function el(tag, attrs, ...children) {
    const element = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === 'class') element.className = value;
      else if (key === 'text') element.textContent = value;
      else if (key.startsWith('on')) element.addEventListener(key.slice(2), value);
      else element.setAttribute(key, value === true ? '' : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      element.append(child instanceof Node ? child : String(child));
    }
    return element;
  }

  function fillTable(selector, rows, emptyText) {
    const table = $(selector);
    const columns = table.tHead.rows[0].cells.length;
    const body = table.tBodies[0];
    body.replaceChildren(...(rows.length ? rows : [el('tr', {}, el('td', { class: 'empty', colspan: columns, text: emptyText }))]));
  }

  const badge = (state) => el('span', { class: 'badge ' + state, text: state });
  const dash = (value) => (value === null || value === undefined || value === '' ? '—' : String(value));

  function when(iso) {
    if (!iso) return '—';
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
  }

  /** A number with `digits` decimals (given), or as an integer / 3 decimals (not given). */
  function num(value, digits) {
    if (typeof value !== 'number') return dash(value);
    if (digits === undefined) return Number.isInteger(value) ? String(value) : value.toFixed(3);
    return value.toFixed(digits);
  }

  /** +1.25 / −0.40 (metric points, the gate's units) */
  const signed = (value) => (typeof value !== 'number' ? '—' : (value < 0 ? '−' : '+') + Math.abs(value).toFixed(2));

  function bytes(n) {
    if (typeof n !== 'number') return dash(n);
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i ? n.toFixed(1) : String(n)) + ' ' + units[i];
  }

  function duration(seconds) {
    if (typeof seconds !== 'number') return '—';
    if (seconds < 90) return Math.round(seconds) + ' s';
    if (seconds < 5400) return Math.round(seconds / 60) + ' min';
    return (seconds / 3600).toFixed(1) + ' h';
  }

  let toastTimer = null;
  function toast(message, bad) {
    const box = $('#toast');
    box.textContent = message;
    box.className = 'toast' + (bad ? ' bad' : '');
    box.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { box.hidden = true; }, bad ? 8000 : 4000);
  }

  /** POST an ops action after an optional confirm(), report it, refresh the page. */
  async function act(button, question, path, json, describe) {
    if (question && !window.confirm(question)) return;
    button.disabled = true;
    try {
      const doc = await api(path, { method: 'POST', json });
      toast(describe ? describe(doc) : 'done');
    } catch (err) {
      toast(err.message, true);
    } finally {
      button.disabled = false;
      await refresh();
    }
  }

  // ------------------------------------------------------------------ navigation and polling
  const pages = {};
  let current = null;
  let busy = false;

  function pageName() {
    const name = location.hash.slice(1);
    return name in pages ? name : 'models';
  }

  async function show() {
    current = pageName();
    for (const name of Object.keys(pages)) $('#page-' + name).hidden = name !== current;
    for (const link of document.querySelectorAll('#nav a')) link.classList.toggle('active', link.dataset.page === current);
    await refresh();
  }

  let again = false;

  /** Reload the visible page, one load at a time (a slow answer never stacks polls; a refresh asked for
   * during a load runs once after it, so an action's result always shows). */
  async function refresh() {
    if (!current || $('#console').hidden) return;
    if (busy) { again = true; return; }
    busy = true;
    try {
      do {
        again = false;
        try {
          await pages[current].load();
          document.body.dataset.loaded = current;
        } catch (err) {
          if (err.status !== 401) toast(err.message, true);
        }
      } while (again);
    } finally {
      busy = false;
    }
  }

  function poll() {
    let ticks = 0;
    setInterval(() => {
      ticks += 1;
      if (document.hidden || !current) return;
      const every = pages[current].pollEvery || 0; // in 2 s ticks; 0 = only on demand
      if (every && ticks % every === 0) refresh();
    }, 2000);
  }

  // ------------------------------------------------------------------ sign-in
  async function signIn(token) {
    await api('v1/ops/jobs?limit=1', { token }); // 401: unknown token, 403: not an ops token
    sessionStorage.setItem(TOKEN_KEY, token);
    $('#login').hidden = true;
    $('#console').hidden = false;
    await show();
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    $('#console').hidden = true;
    $('#login').hidden = false;
    $('#login-error').textContent = message || '';
    $('#token').value = '';
  }

  function loginMessage(err) {
    if (err.status === 403) return 'This token lacks the ops role: ' + err.message;
    if (err.status === 401) return 'Unknown token: ' + err.message;
    return err.message;
  }

  // ------------------------------------------------------------------ models
  function setStatus(listing) {
    const pin = listing.pinned ? ' · promotion pinned' : '';
    $('#status').textContent = 'serving ' + (listing.serving ? 'v' + listing.serving : 'nothing') + pin;
  }

  /** version → {job, gate}: the newest job whose gate judged that candidate. */
  function gateDecisions(jobs) {
    const out = {};
    for (const job of jobs.slice().reverse()) {
      const gate = job.result && job.result.gate;
      if (gate && gate.candidate) out[gate.candidate] = { job, gate };
    }
    return out;
  }

  function gateCell(entry, version) {
    if (!entry) return el('span', { class: 'muted', text: version.reason || '—' });
    const g = entry.gate;
    const interval = typeof g.ci_low === 'number' ? `[${signed(g.ci_low)}, ${signed(g.ci_high)}]` : '(no interval)';
    const basis = typeof g.ci_low === 'number' ? `95% interval over ${g.persons} persons` : 'point Δ only';
    return el('div', { class: 'gate', title: g.reason || '' },
      badge(g.decision), ' ', `${g.metric} ${num(g.candidate_value, 2)} vs ${num(g.active_value, 2)}: Δ ${signed(g.gain)} `,
      el('span', { class: 'interval', text: interval }),
      el('div', { class: 'muted', text: `${basis}, margin ${g.margin} · job ${entry.job.id}` }));
  }

  function versionActions(v, listing) {
    const servable = v.on_disk && v.status !== 'rejected';
    const buttons = [];
    if (servable && v.status !== 'active') {
      const b = el('button', { class: 'small', type: 'button', 'data-action': 'promote', text: 'Promote' });
      b.addEventListener('click', () => act(b, `Promote version ${v.version}? It serves as soon as it is loaded.`,
        'v1/ops/promote', { version: v.version, reason: 'ops console' }, (d) => `v${d.active} active (was v${d.previous})`));
      buttons.push(b);
    }
    const pinnedHere = listing.pinned && v.version === listing.active;
    if (servable && !pinnedHere) {
      const b = el('button', { class: 'small secondary', type: 'button', 'data-action': 'pin', text: 'Pin' });
      b.addEventListener('click', () => act(b, `Pin version ${v.version}? The retrain gate stops promoting automatically.`,
        'v1/ops/pin', { version: v.version, reason: 'ops console' }, (d) => `pinned on v${d.active}`));
      buttons.push(b);
    }
    if (v.on_disk) {
      const b = el('button', { class: 'small secondary', type: 'button', 'data-action': 'compare', text: 'Compare' });
      b.addEventListener('click', () => {
        $('#cmp-after').value = v.version;
        $('#cmp-before').value = v.parent || listing.previous_active || listing.active || v.version;
        showCompare().catch((err) => toast(err.message, true));
      });
      buttons.push(b);
    }
    return el('div', { class: 'actions' }, buttons);
  }

  // ------------------------------------------------------------------ before / after previews
  const COMPARE_UPLOADS = 3;

  /** Version choices for the comparison: every version with files on disk, newest first; a choice the
   * operator made stays selected across polls. */
  function fillCompareChoices(listing) {
    const onDisk = listing.versions.filter((v) => v.on_disk).map((v) => v.version).reverse();
    for (const [id, fallback] of [['#cmp-after', onDisk[0]], ['#cmp-before', onDisk[1] || onDisk[0]]]) {
      const select = $(id);
      const chosen = select.value;
      select.replaceChildren(...onDisk.map((v) => el('option', { value: v, text: 'v' + v })));
      select.value = onDisk.includes(chosen) ? chosen : fallback || '';
    }
    $('#cmp-show').disabled = onDisk.length === 0;
  }

  const renderUrl = (version, sha) => api(`v1/models/${encodeURIComponent(version)}/render?upload=${sha}`, { blob: true });

  async function showCompare() {
    const before = $('#cmp-before').value, after = $('#cmp-after').value;
    const target = $('#compare-pairs');
    if (!before || !after) return;
    const stats = await api('v1/unlabeled/stats');
    const page = await api(`v1/unlabeled/items?after_seq=${Math.max(0, (stats.max_seq || 0) - 4 * COMPARE_UPLOADS)}&limit=${4 * COMPARE_UPLOADS}`);
    const uploads = page.items.filter((i) => i.check !== 'quarantined').reverse().slice(0, COMPARE_UPLOADS);
    if (!uploads.length) {
      target.replaceChildren(el('p', { class: 'muted', text: 'The pool is empty: upload images (POST /v1/unlabeled) to compare versions on them.' }));
      return;
    }
    const figure = (version, url, item) => el('figure', { 'data-version': version },
      el('img', { src: url, alt: `upload #${item.seq} by v${version}` }),
      el('figcaption', { text: `v${version} · upload #${item.seq}${item.name ? ' · ' + item.name : ''}` }));
    try {
      const pairs = await Promise.all(uploads.map(async (item) => {
        const [a, b] = await Promise.all([renderUrl(before, item.sha256), renderUrl(after, item.sha256)]);
        return el('div', { class: 'pair', 'data-sha': item.sha256 }, figure(before, a, item), figure(after, b, item));
      }));
      target.replaceChildren(...pairs);
    } catch (err) {
      target.replaceChildren(el('p', { class: 'error', text: err.message }));
    }
  }

  function modelRow(v, listing, gates) {
    const serving = v.version === listing.serving ? el('strong', { text: '● serving' }) : v.loaded ? 'loaded' : '';
    const metrics = Object.entries(v.metrics || {}).map(([k, value]) => `${k} ${num(value, 2)}`).join(' · ');
    return el('tr', { 'data-version': v.version },
      el('td', {}, el('strong', { text: 'v' + v.version })),
      el('td', {}, badge(v.status), v.on_disk ? '' : el('span', { class: 'muted', text: ' pruned' })),
      el('td', {}, serving),
      el('td', { text: v.parent ? 'v' + v.parent : '—' }),
      el('td', { text: when(v.created) }),
      el('td', { text: metrics || '—' }),
      el('td', {}, gateCell(gates[v.version], v)),
      el('td', {}, versionActions(v, listing)));
  }

  async function loadModels() {
    const [listing, jobs] = await Promise.all([api('v1/models'), api('v1/ops/jobs?limit=200')]);
    setStatus(listing);
    const pin = listing.pinned;
    $('#pin-state').textContent = pin
      ? `Automatic promotion pinned by ${pin.actor} since ${when(pin.since)}${pin.reason ? ' (' + pin.reason + ')' : ''}`
      : 'The retrain gate may promote automatically.';
    $('#unpin').hidden = !pin;
    $('#rollback').disabled = !listing.previous_active;
    $('#rollback').title = listing.previous_active ? 'back to v' + listing.previous_active : 'no previous version';
    const gates = gateDecisions(jobs.jobs);
    fillTable('#models-table', listing.versions.slice().reverse().map((v) => modelRow(v, listing, gates)),
      'no versions registered yet');
    fillCompareChoices(listing);
  }

  // ------------------------------------------------------------------ unlabeled pool
  const POOL_LABELS = {
    total: ['images in the pool', String],
    new_since_active: ['new since the active model was trained', String],
    rejected: ['rejected uploads', String],
    checked: ['ingest-checked', String],
    quarantined: ['quarantined', String],
    mean_teacher_confidence: ['mean teacher confidence', (v) => num(v, 3)],
    disk_bytes: ['disk use (images + index)', bytes],
    max_seq: ['upload sequence', String],
    active_version: ['active version', (v) => (v ? 'v' + v : '—')],
  };

  function statCard(key, value) {
    const [label, format] = POOL_LABELS[key] || [key.replace(/_/g, ' '), (v) => (typeof v === 'number' ? num(v) : dash(v))];
    return el('div', { class: 'stat', 'data-key': key },
      el('div', { class: 'value', text: value === null || value === undefined ? '—' : format(value) }),
      el('div', { class: 'label', text: label }));
  }

  /** A table of per-source figures, whatever shape the server sends: {name: {...}} or [{source, ...}]. */
  function sourceTable(sources) {
    const entries = Array.isArray(sources)
      ? sources.map((row) => [row.source || row.name || '—', row])
      : Object.entries(sources).map(([name, row]) => [name, typeof row === 'object' && row ? row : { images: row }]);
    const keys = [...new Set(entries.flatMap(([, row]) => Object.keys(row)))].filter((k) => k !== 'source' && k !== 'name');
    return el('table', { class: 'grid', id: 'pool-sources-table' },
      el('thead', {}, el('tr', {}, el('th', { text: 'source' }), keys.map((k) => el('th', { text: k.replace(/_/g, ' ') })))),
      el('tbody', {}, entries.map(([name, row]) => el('tr', {}, el('td', { text: name }),
        keys.map((k) => el('td', { text: k.endsWith('bytes') ? bytes(row[k]) : dash(row[k]) }))))));
  }

  const GALLERY_SIZE = 24;
  const thumbnails = new Map(); // sha256 → object URL of its thumbnail (fetched once, with the token)
  let galleryKey = '';

  async function thumbnailUrl(sha) {
    if (!thumbnails.has(sha)) thumbnails.set(sha, await api('v1/unlabeled/' + sha + '/thumbnail', { blob: true }));
    return thumbnails.get(sha);
  }

  function galleryTile(item) {
    const placeholder = (text) => el('div', { class: 'no-thumb', text });
    let image;
    if (item.has_thumbnail) {
      image = el('img', { alt: item.name || item.sha256.slice(0, 12) });
      thumbnailUrl(item.sha256).then((url) => { image.src = url; }, () => image.replaceWith(placeholder('thumbnail unavailable')));
    } else {
      image = placeholder(item.check === 'pending' ? 'not checked yet' : 'no thumbnail');
    }
    const remove = el('button', { class: 'danger small', text: 'Delete', 'data-sha': item.sha256 });
    remove.addEventListener('click', async () => {
      if (!window.confirm(`Delete upload #${item.seq} (${item.name || item.sha256.slice(0, 12)}) from the pool for good?`)) return;
      remove.disabled = true;
      try {
        const doc = await api('v1/unlabeled/' + item.sha256 + '?reason=' + encodeURIComponent('ops console'), { method: 'DELETE' });
        toast(`deleted upload #${doc.seq}`);
      } catch (err) {
        toast(err.message, true);
      } finally {
        await refresh();
      }
    });
    const facts = [`#${item.seq}`, item.source || 'no source', item.check];
    if (item.teacher_confidence !== null) facts.push('conf ' + num(item.teacher_confidence, 2));
    if (item.disagreement !== null) facts.push('flip gap ' + num(item.disagreement, 3));
    if (item.persons !== null) facts.push(item.persons + (item.persons === 1 ? ' person' : ' persons'));
    return el('figure', { class: 'tile' + (item.check === 'quarantined' ? ' quarantined' : ''), 'data-seq': item.seq },
      image, el('figcaption', { text: facts.join(' · '), title: item.quarantine_reason || item.name || '' }), remove);
  }

  async function loadGallery(maxSeq) {
    const page = await api(`v1/unlabeled/items?after_seq=${Math.max(0, maxSeq - GALLERY_SIZE)}&limit=${GALLERY_SIZE}`);
    const items = page.items.slice().reverse(); // newest first
    const key = items.map((i) => i.sha256 + i.check).join();
    if (key === galleryKey) return; // unchanged since the last poll: keep the tiles (no flicker, no refetch)
    galleryKey = key;
    $('#pool-gallery').replaceChildren(...(items.length ? items.map(galleryTile)
      : [el('p', { class: 'muted', text: 'The pool is empty: POST /v1/unlabeled (or `poseloop upload`) adds images.' })]));
  }

  async function loadPool() {
    const stats = await api('v1/unlabeled/stats');
    const scalar = Object.entries(stats).filter(([, v]) => v === null || typeof v !== 'object');
    const order = Object.keys(POOL_LABELS);
    scalar.sort(([a], [b]) => (order.indexOf(a) + 1 || 99) - (order.indexOf(b) + 1 || 99));
    $('#pool-cards').replaceChildren(...scalar.filter(([k]) => k !== 'active_unlabeled_seq').map(([k, v]) => statCard(k, v)));
    const sources = stats.sources || stats.by_source;
    $('#pool-sources').replaceChildren(sources && Object.keys(sources).length
      ? sourceTable(sources)
      : el('p', { class: 'muted', text: 'This server does not report per-source figures (GET /v1/unlabeled/stats).' }));
    await loadGallery(stats.max_seq || 0);
  }

  // ------------------------------------------------------------------ audit log
  async function loadEvents() {
    const doc = await api('v1/ops/events?limit=' + encodeURIComponent($('#events-limit').value));
    const rows = doc.events.slice().reverse().map((e) => el('tr', {},
      el('td', { text: when(e.ts) }), el('td', { text: e.actor }), el('td', {}, badge(e.action)),
      el('td', { text: 'v' + e.version }), el('td', { text: `${dash(e.from)} → ${dash(e.to)}` }),
      el('td', { text: e.reason || '' })));
    fillTable('#events-table', rows, 'no events yet');
  }

  // ------------------------------------------------------------------ start
  Object.assign(pages, {
    models: { load: loadModels, pollEvery: 5 },
    pool: { load: loadPool, pollEvery: 5 },
    events: { load: loadEvents, pollEvery: 5 },
  });

  function boot() {
    for (const page of Object.values(pages)) if (page.init) page.init();
    $('#login-form').addEventListener('submit', async (event) => {
      event.preventDefault();
      $('#login-submit').disabled = true;
      try { await signIn($('#token').value.trim()); } catch (err) { signOut(loginMessage(err)); } finally {
        $('#login-submit').disabled = false;
      }
    });
    $('#logout').addEventListener('click', () => signOut('Signed out.'));
    $('#rollback').addEventListener('click', (e) => act(e.currentTarget, 'Roll back to the previous active version?',
      'v1/ops/rollback', { reason: 'ops console' }, (d) => `rolled back: v${d.active} active (was v${d.previous})`));
    $('#unpin').addEventListener('click', (e) => act(e.currentTarget, null, 'v1/ops/unpin', { reason: 'ops console' },
      () => 'automatic promotion allowed again'));
    $('#cmp-show').addEventListener('click', () => showCompare().catch((err) => toast(err.message, true)));
    $('#events-limit').addEventListener('change', refresh);
    window.addEventListener('hashchange', show);
    poll();
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) signIn(token).catch((err) => signOut(loginMessage(err)));
    else signOut('');
  }

  window.PoseLoop = { api, el, $, fillTable, badge, dash, when, num, signed, duration, toast, act, refresh, pages, FINAL };
  document.addEventListener('DOMContentLoaded', boot);
})();
