/**
 * The marcelle-torch web app: one Marcelle dashboard, one page per way of running a PyTorch
 * model (Ray Serve, ONNX in the browser, runs through the Marcelle backend).
 *
 * Every module in ./pages is a page: it exports `title`, `order` and a default
 * `function (dash, config)` that adds its page with `dash.page(title)...`. Adding a page is
 * adding a file; this file does not change.
 */
import '@marcellejs/core/dist/marcelle.css';
import { dashboard, throwError } from '@marcellejs/core';
import { loadConfig } from './config.js';

const modules = import.meta.glob('./pages/*.js', { eager: true });

/** Page modules sorted by `order` (then file name); helper modules without a default export are skipped. */
function sortedPages(found = modules) {
  return Object.entries(found)
    .filter(([, mod]) => typeof mod.default === 'function')
    .map(([path, mod]) => ({ path, title: mod.title ?? path, order: mod.order ?? Infinity, setup: mod.default }))
    .sort((a, b) => a.order - b.order || a.path.localeCompare(b.path));
}

async function main() {
  const config = await loadConfig();
  const dash = dashboard({ title: 'marcelle-torch', author: 'marcelle-torch' });
  for (const page of sortedPages()) {
    try {
      page.setup(dash, config);
    } catch (error) {
      // One broken page must not take the others down: report it and go on.
      console.error(`page ${page.title} (${page.path}) failed to load`, error);
      throwError(new Error(`page "${page.title}" failed to load: ${error.message}`), { duration: 0 });
    }
  }
  dash.show();
}

main();
