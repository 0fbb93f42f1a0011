/* PoseLoop ops console: the jobs page — list with live progress (polled), one job's loss and validation
 * curves (GET /v1/ops/jobs/{id}/metrics), its log tail and gate decision, cancel, and the retrain form. */
(function () {
  'use strict';

  const P = window.PoseLoop;
  const { api, el, $, badge, dash, when, num, signed, duration } = P;
  let selected = null;
  let curveStamp = null; // job id + updated time of the curves on screen: refetched only when the job moved
  let retrainKey = newKey();

  /** An Idempotency-Key per filled-in form: a double click or a retried request starts one job. */
  function newKey() {
    const raw = new Uint8Array(12);
    crypto.getRandomValues(raw);
    return 'ui-' + Array.from(raw, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  function progressCell(job) {
    const p = job.progress || {};
    const percent = typeof p.percent === 'number' ? p.percent : job.state === 'succeeded' ? 100 : 0;
    const fill = el('span');
    fill.style.width = Math.max(0, Math.min(100, percent)) + '%';
    const steps = typeof p.step === 'number' ? ` ${p.step}/${dash(p.total_steps)}` : '';
    return el('td', {}, el('span', { class: 'progress', title: percent + '%' }, fill), `${steps} ${percent}%`);
  }

  function jobRow(job) {
    const p = job.progress || {};
    const gate = job.result && job.result.gate;
    const row = el('tr', { 'data-job-id': job.id, class: job.id === selected ? 'selected' : null },
      el('td', { class: 'mono', text: job.id }),
      el('td', {}, badge(job.state), job.cancel_requested && job.state === 'running' ? ' cancelling' : ''),
      el('td', { text: dash(p.stage) }),
      progressCell(job),
      el('td', { text: job.state === 'running' ? duration(p.eta_s) : '—' }),
      el('td', { text: job.requested_by }),
      el('td', { text: when(job.created) }),
      el('td', {}, gate ? badge(gate.decision) : '—'));
    row.addEventListener('click', () => select(job.id));
    return row;
  }

  async function load() {
    const doc = await api('v1/ops/jobs?limit=100');
    P.fillTable('#jobs-table', doc.jobs.map(jobRow), 'no jobs yet: start one with the retrain form');
    if (selected) await loadDetail(selected);
  }

  async function select(id) {
    selected = id;
    curveStamp = null;
    for (const row of document.querySelectorAll('#jobs-table tbody tr')) {
      row.classList.toggle('selected', row.dataset.jobId === id);
    }
    try { await loadDetail(id); } catch (err) { P.toast(err.message, true); }
  }

  function describeGate(g) {
    const interval = typeof g.ci_low === 'number' ? ` [${signed(g.ci_low)}, ${signed(g.ci_high)}]` : ' (no interval)';
    return `${g.decision}: v${g.candidate} ${g.metric} ${num(g.candidate_value, 2)} vs v${g.parent} ` +
      `${num(g.active_value, 2)}, Δ ${signed(g.gain)}${interval}, margin ${g.margin} — ${g.reason}`;
  }

  function summary(job) {
    const p = job.progress || {};
    const r = job.result || {};
    const pairs = (obj) => Object.entries(obj || {}).map(([k, v]) => `${k} ${num(v, 4)}`).join(' · ');
    const items = [
      ['kind', job.kind], ['params', JSON.stringify(job.params)], ['requested by', job.requested_by],
      ['attempts', job.attempts], ['started', when(job.started)], ['finished', when(job.finished)],
      ['stage', p.stage], ['step', typeof p.step === 'number' ? `${p.step} of ${dash(p.total_steps)}` : null],
      ['losses', pairs(p.losses)], ['validation', pairs(p.validation)],
      ['candidate', r.candidate ? `v${r.candidate.version} (${r.candidate.state})` : null],
      ['gate', r.gate ? describeGate(r.gate) : null], ['error', job.error],
    ];
    return items.filter(([, v]) => v !== null && v !== undefined && v !== '')
      .flatMap(([k, v]) => [el('dt', { text: k }), el('dd', { text: String(v) })]);
  }

  async function loadDetail(id) {
    const job = await api(`v1/ops/jobs/${encodeURIComponent(id)}?tail=100`);
    if (id !== selected) return; // another job was clicked meanwhile
    $('#job-detail').hidden = false;
    $('#job-title').textContent = 'Job ' + job.id;
    $('#job-state').replaceChildren(badge(job.state));
    $('#job-cancel').hidden = P.FINAL.includes(job.state);
    $('#job-cancel').disabled = job.cancel_requested;
    $('#job-summary').replaceChildren(...summary(job));
    const log = $('#job-log');
    const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.textContent = (job.logs_tail || []).join('\n');
    if (atEnd) log.scrollTop = log.scrollHeight;
    const stamp = job.id + job.updated;
    if (stamp !== curveStamp) {
      curveStamp = stamp;
      drawCurves(await api(`v1/ops/jobs/${encodeURIComponent(id)}/metrics`));
    }
  }

  /** Loss series (every `loss*` field of the training rows) and validation series (`val/<metric>`). */
  function drawCurves(doc) {
    const isVal = (row) => Object.keys(row).some((k) => k.startsWith('val/'));
    const series = (rows, keep) => {
      const keys = [...new Set(rows.flatMap((row) => Object.keys(row)))].filter(keep).sort();
      return keys.map((k) => ({ name: k, points: rows.filter((row) => k in row).map((row) => [row.step, row[k]]) }));
    };
    const none = doc.available ? 'no rows logged yet' : 'no metrics file for this job on the API host yet';
    const train = doc.rows.filter((row) => !isVal(row));
    const val = doc.rows.filter(isVal);
    const steps = doc.rows.map((row) => row.step).filter(Number.isFinite);
    const xDomain = steps.length > 1 && Math.min(...steps) < Math.max(...steps)
      ? [Math.min(...steps), Math.max(...steps)] : undefined; // one step axis for both charts
    window.PoseCharts.lineChart($('#chart-loss'), series(train, (k) => k.startsWith('loss')), {
      empty: none, title: 'training loss', xDomain });
    window.PoseCharts.lineChart($('#chart-val'), series(val, (k) => /^val\/[^/]+$/.test(k)), {
      empty: doc.available ? 'no validation yet (retrain jobs validate once, at the end)' : none,
      title: 'validation', xDomain });
  }

  function retrainBody() {
    const body = {};
    const int = (id) => parseInt($(id).value, 10);
    if ($('#rt-iterations').value) body.iterations = int('#rt-iterations');
    if ($('#rt-margin').value) body.margin = parseFloat($('#rt-margin').value);
    if ($('#rt-nproc').value) body.nproc = int('#rt-nproc');
    const overrides = $('#rt-overrides').value.split('\n').map((s) => s.trim()).filter(Boolean);
    if (overrides.length) body.overrides = overrides;
    if ($('#rt-reason').value.trim()) body.reason = $('#rt-reason').value.trim();
    return body;
  }

  async function submitRetrain(event) {
    event.preventDefault();
    const message = $('#retrain-message');
    const button = $('#retrain-submit');
    button.disabled = true;
    try {
      const doc = await api('v1/ops/retrain', {
        method: 'POST', json: retrainBody(), headers: { 'Idempotency-Key': retrainKey } });
      message.className = 'message ok';
      message.textContent = doc.created ? `Job ${doc.job.id} queued (${doc.queue} worker).`
        : `The same request again: job ${doc.job.id} (${doc.job.state}).`;
      retrainKey = newKey();
      selected = doc.job.id;
      curveStamp = null;
      await load();
    } catch (err) {
      message.className = 'message bad';
      message.textContent = err.message;
    } finally {
      button.disabled = false;
    }
  }

  function init() {
    $('#retrain-form').addEventListener('submit', submitRetrain);
    $('#retrain-form').addEventListener('input', () => { retrainKey = newKey(); });
    $('#job-cancel').addEventListener('click', (e) => P.act(e.currentTarget, `Cancel job ${selected}?`,
      `v1/ops/jobs/${encodeURIComponent(selected)}/cancel`, undefined,
      (job) => (job.state === 'cancelled' ? `job ${job.id} cancelled` : `cancel requested: job ${job.id} stops at its next heartbeat`)));
  }

  P.pages.jobs = { load, init, pollEvery: 1 };
})();
