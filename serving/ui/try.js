/* PoseLoop ops console: the try-it page — send an image to POST /v1/pose and draw the skeletons it returns
 * over the image on a canvas. Keypoints are image pixels (x = column, y = row, pixel centres at integers);
 * the edges are the active model's skeleton (GET /v1/models/active). */
(function () {
  'use strict';

  const P = window.PoseLoop;
  const { api, el, $, num } = P;
  const INFER_KEY = 'poseloop.inferToken';
  const SKELETON = '#00e676'; // edges and keypoint rims (tests/test_ui.py looks for this colour)
  const BOX = '#ffd60a';
  const MIN_SIDE = 480; // canvas pixels the longer side of a small image is enlarged towards

  function drawPoses(canvas, bitmap, doc, edges) {
    // small images (LSP's are ~100 × 200) are drawn enlarged, so the skeleton stays readable
    const scale = Math.max(1, Math.min(4, Math.floor(MIN_SIDE / Math.max(bitmap.width, bitmap.height))));
    canvas.width = bitmap.width * scale;
    canvas.height = bitmap.height * scale;
    canvas.dataset.scale = String(scale);
    const ctx = canvas.getContext('2d');
    ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    // image pixels → canvas pixels (the server's grid; it may have applied EXIF orientation as the browser did)
    const sx = canvas.width / doc.image.width;
    const sy = canvas.height / doc.image.height;
    const line = Math.max(3, Math.round(Math.min(canvas.width, canvas.height) / 120));
    let drawn = 0;
    for (const person of doc.persons) {
      const [bx, by, bw, bh] = person.box;
      ctx.setLineDash([line * 3, line * 2]);
      ctx.lineWidth = Math.max(1, line / 2);
      ctx.strokeStyle = BOX;
      ctx.strokeRect(bx * sx, by * sy, bw * sx, bh * sy);
      ctx.setLineDash([]);
      const kp = person.keypoints;
      ctx.lineWidth = line;
      ctx.lineCap = 'round';
      ctx.strokeStyle = SKELETON;
      for (const [a, b] of edges) {
        if (!kp[a] || !kp[b] || !kp[a].valid || !kp[b].valid) continue;
        ctx.beginPath();
        ctx.moveTo(kp[a].x * sx, kp[a].y * sy);
        ctx.lineTo(kp[b].x * sx, kp[b].y * sy);
        ctx.stroke();
        drawn += 1;
      }
      for (const point of kp.filter((k) => k.valid)) {
        ctx.beginPath();
        ctx.arc(point.x * sx, point.y * sy, line * 1.6, 0, 2 * Math.PI);
        ctx.fillStyle = '#ffffff';
        ctx.fill();
        ctx.stroke();
      }
    }
    canvas.dataset.persons = String(doc.persons.length);
    canvas.dataset.edges = String(drawn);
  }

  function personRows(doc) {
    return doc.persons.map((person, i) => el('tr', {},
      el('td', { text: String(i + 1) }),
      el('td', { class: 'mono', text: person.box.map((v) => Math.round(v)).join(', ') }),
      el('td', { text: num(person.pose_score, 3) }),
      el('td', { text: `${person.keypoints.filter((k) => k.valid).length} of ${person.keypoints.length}` })));
  }

  async function submit(event) {
    event.preventDefault();
    const message = $('#try-message');
    const file = $('#try-file').files[0];
    if (!file) return;
    const inferToken = $('#try-token').value.trim();
    if (inferToken) sessionStorage.setItem(INFER_KEY, inferToken);
    const form = new FormData();
    form.append('image', file, file.name);
    if ($('#try-threshold').value !== '') form.append('kpt_threshold', $('#try-threshold').value);
    if ($('#try-det').value !== '') form.append('det_threshold', $('#try-det').value);
    if ($('#try-flip').checked) form.append('flip', 'true');
    $('#try-submit').disabled = true;
    message.className = 'message';
    message.textContent = 'Detecting…';
    try {
      const [doc, model, bitmap] = await Promise.all([
        api('v1/pose', { method: 'POST', body: form, token: inferToken || undefined }),
        api('v1/models/active'),
        createImageBitmap(file),
      ]);
      drawPoses($('#try-canvas'), bitmap, doc, model.skeleton);
      P.fillTable('#try-persons', personRows(doc), 'no person found');
      message.className = 'message ok';
      message.textContent = `${doc.persons.length} person(s) from v${doc.model_version} in ` +
        `${num(doc.timing_ms.total, 1)} ms (boxes from ${doc.boxes_from}).`;
    } catch (err) {
      message.className = 'message bad';
      message.textContent = err.status === 403
        ? 'The sign-in token lacks the infer role: enter an infer token in the field above. (' + err.message + ')'
        : err.message;
    } finally {
      $('#try-submit').disabled = false;
    }
  }

  function init() {
    $('#try-token').value = sessionStorage.getItem(INFER_KEY) || '';
    $('#try-form').addEventListener('submit', submit);
  }

  P.pages.try = { load: async () => {}, init };
})();
