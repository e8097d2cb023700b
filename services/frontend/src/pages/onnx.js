/**
 * Solution 2 — client-side inference with ONNX.
 *
 * A model exported by `marcelle-torch export-onnx` runs in the page with onnxruntime-web
 * (WebAssembly); the image never leaves the browser. The picker offers every bundle the app
 * serves: those built into it (services/frontend/public/onnx/*, listed at build time) and
 * `config.onnxBundles` (added at deploy time by `marcelle-torch up --model` and the chart's
 * `models`); `config.onnxBundle` is the one picked first.
 */
import { confidencePlot, text } from '@marcellejs/core';
import { escapeHtml, imageInput, modelPicker, onnxClassifier, predictionsOf } from 'marcelle-torch';

export const title = 'ONNX in the browser';
export const order = 2;

/** The bundle folders the app serves ("onnx/<name>/"), each once, in order. */
export function bundlesOf(config, builtIn = __ONNX_BUNDLES__) {
  const folder = (path) => (path.endsWith('/') ? path : `${path}/`);
  const extra = Array.isArray(config.onnxBundles) ? config.onnxBundles.filter((b) => typeof b === 'string') : [];
  const preferred = typeof config.onnxBundle === 'string' ? [config.onnxBundle] : [];
  return [...new Set([...preferred, ...builtIn, ...extra].map(folder))];
}

function formatLabel({ label, confidences, modelVersion = '' }, latency, count) {
  const p = confidences[label];
  const safe = escapeHtml(label);
  return (
    `<p>Predicted label: <code data-testid="onnx-label" data-label="${safe}" data-confidence="${p}" ` +
    `data-confidences="${escapeHtml(JSON.stringify(confidences))}" data-count="${count}" ` +
    `data-version="${escapeHtml(modelVersion)}" ` +
    `style="font-size:2rem">${safe}</code> <span style="color:#6b7280">(${(100 * p).toFixed(1)}%)</span></p>` +
    `<p style="color:#6b7280">inference in the browser: <span data-testid="onnx-time" data-ms="${latency}">` +
    `${latency.toFixed(1)} ms</span>; nothing was sent over the network</p>`
  );
}

export default function onnxPage(dash, config) {
  const bundles = bundlesOf(config);
  if (bundles.length === 0) throw new Error('the app serves no ONNX bundle (run `marcelle-torch export-onnx`)');
  const input = imageInput();
  // config.onnxThreads: 'auto' (default) or a WASM thread count (threads need cross-origin isolation).
  // A published version replaces the bundle where it is served: the page checks its version when
  // shown and every config.onnxRefreshMs (default 3 s) while it is, and loads the new one.
  const classifier = onnxClassifier({
    bundle: bundles[0],
    threads: config.onnxThreads ?? 'auto',
    refresh: config.onnxRefreshMs ?? 3000,
  });
  const picker = modelPicker({ testid: 'onnx-model-picker' });
  picker.setChoices(bundles.map((b) => ({ value: b, label: b.replace(/^onnx\//, '').replace(/\/$/, '') })));
  picker.$value.subscribe((bundle) => bundle && classifier.setBundle(bundle));
  classifier.$metadata.subscribe((metadata) => metadata && input.follow(metadata.input));

  const $predictions = predictionsOf(input.$images, classifier);
  // config.benchHooks: the classifier as window.marcelleTorchOnnx, for bench/parity.py to time
  // the page's runtime back to back on the same inputs as native onnxruntime (off by default).
  if (config.benchHooks) window.marcelleTorchOnnx = classifier;

  const label = text('Give the model an image on the left: it runs in this page.');
  label.title = 'prediction';
  let count = 0; // a stable hook: tells one prediction from the next, even when they are equal
  $predictions.subscribe((prediction) => {
    count += 1;
    label.$value.set(formatLabel(prediction, classifier.$latency.get(), count));
  });

  const plot = confidencePlot($predictions);
  plot.title = 'confidences';

  dash.page(title).sidebar(picker, input).use(classifier, [label, plot]);
}
