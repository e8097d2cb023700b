/**
 * The DOM pieces the web app's panels (run-panel.js, teach-panel.js) lay their Marcelle widgets
 * out with.
 */

/** A Marcelle widget without a title of its own (the panel's rows label it). */
export function untitled(widget) {
  widget.title = '';
  return widget;
}

/** A row of nodes, side by side, wrapping on narrow screens. */
export function row(...children) {
  const div = document.createElement('div');
  div.style.cssText = 'display:flex;gap:0.75rem;align-items:center;flex-wrap:wrap;margin:.5rem 0';
  div.append(...children);
  return div;
}
