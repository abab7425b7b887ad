// Tile geometry: where every tile of the call goes on the stage. Pure functions of the stage
// size and the tile list, so the page positions tiles absolutely (moving a <video> in the DOM
// would pause it) and the tests can reason about the same numbers.

/** Camera tiles may be cropped between these aspect ratios; outside them the tile letterboxes. */
export const CAMERA_ASPECT = { min: 4 / 3, max: 16 / 9 };
/** On a narrow (phone) stage square tiles are fine: faces stay in the crop. */
export const PHONE_CAMERA_ASPECT = { min: 1, max: 16 / 9 };

function tileIn(cellW, cellH, aspect) {
  const a = cellW / cellH;
  if (a > aspect.max) return { w: cellH * aspect.max, h: cellH };
  if (a < aspect.min) return { w: cellW, h: cellW / aspect.min };
  return { w: cellW, h: cellH };
}

/**
 * The grid (columns × rows) that gives n tiles the largest area in a width × height box.
 * Returns { cols, rows, tileW, tileH }.
 */
export function bestGrid(n, width, height, gap = 8, aspect = CAMERA_ASPECT) {
  let best = null;
  if (n <= 0 || width <= 0 || height <= 0) return { cols: 1, rows: 1, tileW: 0, tileH: 0 };
  for (let cols = 1; cols <= n; cols += 1) {
    const rows = Math.ceil(n / cols);
    // A column count whose last row would be empty is the same grid as a smaller one.
    if ((rows - 1) * cols >= n) continue;
    const cellW = (width - gap * (cols - 1)) / cols;
    const cellH = (height - gap * (rows - 1)) / rows;
    if (cellW <= 0 || cellH <= 0) continue;
    const { w, h } = tileIn(cellW, cellH, aspect);
    const area = w * h;
    // Prefer the larger tile; on a tie, the grid with fewer empty cells.
    if (!best || area > best.area * 1.0001 || (Math.abs(area - best.area) <= best.area * 0.0001 && cols * rows < best.cols * best.rows)) {
      best = { cols, rows, tileW: Math.floor(w), tileH: Math.floor(h), area };
    }
  }
  return best || { cols: 1, rows: n, tileW: 0, tileH: 0 };
}

/** Places n tiles of a grid in a box, rows centred, the last row centred too. */
function placeGrid(keys, box, grid, gap) {
  const rects = new Map();
  const { cols, rows, tileW, tileH } = grid;
  const usedH = rows * tileH + (rows - 1) * gap;
  const top = box.y + (box.h - usedH) / 2;
  keys.forEach((key, i) => {
    const row = Math.floor(i / cols);
    const inRow = row === rows - 1 ? keys.length - row * cols : cols;
    const col = i - row * cols;
    const rowW = inRow * tileW + (inRow - 1) * gap;
    const left = box.x + (box.w - rowW) / 2;
    rects.set(key, { x: Math.round(left + col * (tileW + gap)), y: Math.round(top + row * (tileH + gap)), w: tileW, h: tileH });
  });
  return rects;
}

/**
 * Lays out the call.
 *   stage: { width, height }
 *   keys: tile keys in display order (the caller puts who matters first)
 *   view: 'grid' | 'speaker'
 *   spotlight: the key shown large in speaker view
 *   minTileWidth: below this the grid shows fewer tiles and an overflow count instead
 * Returns { rects: Map(key -> {x, y, w, h}), hidden: [keys], overflow: {rect, count} | null, view }.
 */
export function computeLayout({ width, height, keys, view = 'grid', spotlight = null, gap = 8, minTileWidth = 120, phone = false }) {
  const aspect = phone ? PHONE_CAMERA_ASPECT : CAMERA_ASPECT;
  const result = { rects: new Map(), hidden: [], overflow: null, view };
  if (!keys.length || width <= 0 || height <= 0) return result;
  const box = { x: 0, y: 0, w: width, h: height };

  if (view === 'speaker' && spotlight && keys.includes(spotlight) && keys.length > 1) {
    const others = keys.filter((k) => k !== spotlight);
    const landscape = width >= height * 1.15;
    let main;
    let strip;
    if (landscape) {
      const stripW = Math.round(Math.min(300, Math.max(150, width * 0.2)));
      main = { x: 0, y: 0, w: width - stripW - gap, h: height };
      strip = { x: width - stripW, y: 0, w: stripW, h: height, vertical: true };
    } else {
      const stripH = Math.round(Math.min(170, Math.max(80, height * 0.2)));
      main = { x: 0, y: 0, w: width, h: height - stripH - gap };
      strip = { x: 0, y: height - stripH, w: width, h: stripH, vertical: false };
    }
    result.rects.set(spotlight, main);
    // Strip tiles are 16:9 when they fit, narrower when that lets more fit; the rest are
    // counted on an overflow tile.
    const along = strip.vertical ? strip.h : strip.w;
    const natural = strip.vertical ? strip.w * 9 / 16 : strip.h * 16 / 9;
    const minAlong = strip.vertical ? Math.max(56, natural * 0.7) : 90;
    const capacity = Math.max(2, Math.floor((along + gap) / (minAlong + gap)));
    const shownCount = others.length > capacity ? capacity - 1 : others.length;
    const slots = shownCount + (others.length > shownCount ? 1 : 0);
    const tileAlong = Math.floor(Math.min(natural, (along - gap * (slots - 1)) / slots));
    const tileW = strip.vertical ? strip.w : tileAlong;
    const tileH = strip.vertical ? tileAlong : strip.h;
    const step = tileAlong + gap;
    const start = Math.max(0, (along - (slots * step - gap)) / 2);
    const place = (i) => {
      const offset = Math.round(start + i * step);
      return strip.vertical
        ? { x: strip.x, y: strip.y + offset, w: tileW, h: tileH }
        : { x: strip.x + offset, y: strip.y, w: tileW, h: tileH };
    };
    const shown = others.slice(0, shownCount);
    shown.forEach((key, i) => result.rects.set(key, place(i)));
    if (others.length > shownCount) {
      result.overflow = { rect: place(shownCount), count: others.length - shownCount };
      result.hidden = others.slice(shownCount);
    }
    result.view = 'speaker';
    return result;
  }

  result.view = 'grid';
  let shownKeys = keys;
  let grid = bestGrid(keys.length, width, height, gap, aspect);
  // Too many to be useful at once: show the first ones and an overflow tile.
  if (grid.tileW < minTileWidth && keys.length > 1) {
    let n = keys.length;
    while (n > 1) {
      n -= 1;
      grid = bestGrid(n + 1, width, height, gap, aspect);
      if (grid.tileW >= minTileWidth) break;
    }
    shownKeys = keys.slice(0, n);
    result.hidden = keys.slice(n);
    const rects = placeGrid([...shownKeys, '__overflow'], box, grid, gap);
    result.overflow = { rect: rects.get('__overflow'), count: result.hidden.length };
    rects.delete('__overflow');
    result.rects = rects;
    return result;
  }
  result.rects = placeGrid(shownKeys, box, grid, gap);
  return result;
}
