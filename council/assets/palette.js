// The colour of the i-th of a list (a council, a process; a report's row or vote), shared as package data by
// the dashboard (council/server/static/app.js, which loads it as /ui/shared/palette.js) and the `council eval
// --html` page (council/evaluation/report_page/report.js, inlined before it): a classic script whose names are
// globals, so the dashboard's module and the report's script read the one definition.
const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f"];

function paletteColour(i) {
  // Past the palette, hues a golden angle apart (no hue repeats, and consecutive ones are far apart), starting
  // in the palette's widest gap of hue, at three lightnesses: a list longer than 9 shares no colour.
  if (i < PALETTE.length) return PALETTE[i];
  const j = i - PALETTE.length;
  return `hsl(${((j * 137.508 + 265) % 360).toFixed(1)}, 60%, ${[42, 30, 56][j % 3]}%)`;
}
