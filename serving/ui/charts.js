/* PoseLoop ops console: a small SVG line chart (no library, no network).
 *
 * PoseCharts.lineChart(container, series, options) draws series = [{name, points: [[x, y], ...]}] with linear
 * axes, "nice" ticks and a legend. A null y (a non-finite value the API sent as null: a diverged loss) breaks
 * the line there; series with few points also get a dot per point, so a single validation is visible.
 * options: width, height (of the plot, the legend adds rows), xLabel, title, empty (the text without data),
 * xDomain ([lo, hi]: one x axis for charts of the same run).
 */
(function () {
  'use strict';

  const NS = 'http://www.w3.org/2000/svg';
  const COLOURS = ['#2f5bea', '#e8590c', '#1a7f4b', '#9c36b5', '#c2255c', '#0b7285', '#5c940d', '#495057'];
  const MARGIN = { left: 58, right: 14, top: 12, bottom: 40 };

  function node(tag, attrs, text) {
    const element = document.createElementNS(NS, tag);
    for (const [key, value] of Object.entries(attrs)) element.setAttribute(key, String(value));
    if (text !== undefined) element.textContent = text;
    return element;
  }

  /** About `count` round tick values covering [lo, hi] (steps of 1, 2 or 5 × 10^k). */
  function ticks(lo, hi, count) {
    const raw = (hi - lo) / Math.max(1, count);
    const magnitude = Math.pow(10, Math.floor(Math.log10(raw)));
    const norm = raw / magnitude;
    const step = (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * magnitude;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
    return out;
  }

  function label(value) {
    const abs = Math.abs(value);
    if (abs >= 1e4) return (value / 1e3).toFixed(abs >= 1e5 ? 0 : 1) + 'k';
    if (abs >= 100 || Number.isInteger(value)) return String(Math.round(value));
    return String(Number(value.toPrecision(3)));
  }

  /** [lo, hi] of the finite values, widened when flat so a constant series still gets an axis. */
  function extent(values, pad) {
    let lo = Math.min(...values);
    let hi = Math.max(...values);
    if (lo === hi) {
      const widen = Math.abs(lo) * 0.1 || 1;
      return [lo - widen, hi + widen];
    }
    const margin = (hi - lo) * pad;
    return [lo - margin, hi + margin];
  }

  function lineChart(container, series, options) {
    const opts = Object.assign({ width: 560, height: 240, xLabel: 'step', empty: 'no data yet' }, options || {});
    container.textContent = '';
    const finite = (p) => p[1] !== null && Number.isFinite(p[1]) && Number.isFinite(p[0]);
    const drawn = series.filter((s) => s.points.some(finite));
    if (!drawn.length) {
      const empty = document.createElement('div');
      empty.className = 'empty';
      empty.textContent = opts.empty;
      container.append(empty);
      return;
    }
    const legendRows = Math.ceil(drawn.length / 4);
    const width = opts.width;
    const height = opts.height + legendRows * 18;
    const plotW = width - MARGIN.left - MARGIN.right;
    const plotH = opts.height - MARGIN.top - MARGIN.bottom;
    const points = drawn.flatMap((s) => s.points.filter(finite));
    const [x0, x1] = opts.xDomain || extent(points.map((p) => p[0]), 0);
    const [y0, y1] = extent(points.map((p) => p[1]), 0.05);
    const sx = (x) => MARGIN.left + ((x - x0) / (x1 - x0)) * plotW;
    const sy = (y) => MARGIN.top + plotH - ((y - y0) / (y1 - y0)) * plotH;

    const svg = node('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': opts.title || 'chart' });
    svg.dataset.series = String(drawn.length);
    svg.dataset.points = String(points.length);
    for (const value of ticks(y0, y1, 5)) {
      const y = sy(value);
      svg.append(node('line', { x1: MARGIN.left, x2: width - MARGIN.right, y1: y, y2: y, stroke: '#e3e6ec' }));
      svg.append(node('text', { x: MARGIN.left - 6, y: y + 4, 'text-anchor': 'end', 'font-size': 11, fill: '#677084' },
        label(value)));
    }
    for (const value of ticks(x0, x1, 6)) {
      const x = sx(value);
      svg.append(node('line', { x1: x, x2: x, y1: MARGIN.top + plotH, y2: MARGIN.top + plotH + 4, stroke: '#9aa1b0' }));
      svg.append(node('text', { x, y: MARGIN.top + plotH + 16, 'text-anchor': 'middle', 'font-size': 11, fill: '#677084' },
        label(value)));
    }
    svg.append(node('rect', { x: MARGIN.left, y: MARGIN.top, width: plotW, height: plotH, fill: 'none', stroke: '#c9ced8' }));
    svg.append(node('text', { x: MARGIN.left + plotW / 2, y: opts.height - 6, 'text-anchor': 'middle', 'font-size': 11,
      fill: '#677084' }, opts.xLabel));

    drawn.forEach((s, i) => {
      const colour = COLOURS[i % COLOURS.length];
      let d = '';
      let pen = false;
      for (const p of s.points) {
        if (!finite(p)) { pen = false; continue; }
        d += `${pen ? 'L' : 'M'}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`;
        pen = true;
      }
      svg.append(node('path', { d, fill: 'none', stroke: colour, 'stroke-width': 1.8, 'data-name': s.name }));
      if (s.points.length <= 24) {
        for (const p of s.points.filter(finite)) {
          svg.append(node('circle', { cx: sx(p[0]), cy: sy(p[1]), r: 3.2, fill: colour }));
        }
      }
      const gaps = s.points.length - s.points.filter(finite).length;
      const lx = MARGIN.left + (i % 4) * (plotW / 4);
      const ly = opts.height + Math.floor(i / 4) * 18 + 4;
      svg.append(node('rect', { x: lx, y: ly, width: 12, height: 4, fill: colour }));
      svg.append(node('text', { x: lx + 16, y: ly + 6, 'font-size': 11, fill: '#1d2330' },
        s.name + (gaps ? ` (${gaps} non-finite)` : '')));
    });
    container.append(svg);
  }

  window.PoseCharts = { lineChart, ticks };
})();
