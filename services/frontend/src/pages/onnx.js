/**
 * Solution 2 — client-side inference with ONNX.
 *
 * The model exported by `marcelle-torch export-onnx` runs in the page with onnxruntime-web
 * (WebAssembly); the drawing never leaves the browser. The bundle is read from the app's own
 * static files (`config.onnxBundle`, default `onnx/digits/`).
 */
import { confidencePlot, text } from '@marcellejs/core';
import { drawingInput } from '../components/drawing-input.js';
import { onnxClassifier } from '../components/onnx-classifier.js';
import { escapeHtml, predictionsOf } from '../components/served-model.js';

export const title = 'ONNX in the browser';
export const order = 2;

function formatLabel({ label, confidences }, latency, count) {
  const p = confidences[label];
  const safe = escapeHtml(label);
  return (
    `<p>Predicted label: <code data-testid="onnx-label" data-label="${safe}" data-confidence="${p}" ` +
    `data-confidences="${escapeHtml(JSON.stringify(confidences))}" data-count="${count}" ` +
    `style="font-size:2rem">${safe}</code> <span style="color:#6b7280">(${(100 * p).toFixed(1)}%)</span></p>` +
    `<p style="color:#6b7280">inference in the browser: <span data-testid="onnx-time" data-ms="${latency}">` +
    `${latency.toFixed(1)} ms</span>; nothing was sent over the network</p>`
  );
}

export default function onnxPage(dash, config) {
  const input = drawingInput();
  // config.onnxThreads: 'auto' (default) or a WASM thread count (threads need cross-origin isolation).
  const classifier = onnxClassifier({
    bundle: config.onnxBundle ?? 'onnx/digits/',
    threads: config.onnxThreads ?? 'auto',
  });

  const $predictions = predictionsOf(input.$images, classifier);
  // config.benchHooks: the classifier as window.marcelleTorchOnnx, for bench/parity.py to time
  // the page's runtime back to back on the same inputs as native onnxruntime (off by default).
  if (config.benchHooks) window.marcelleTorchOnnx = classifier;

  const label = text('Draw a digit on the left: the model runs in this page.');
  label.title = 'prediction';
  let count = 0; // a stable hook: tells one prediction from the next, even when they are equal
  $predictions.subscribe((prediction) => {
    count += 1;
    label.$value.set(formatLabel(prediction, classifier.$latency.get(), count));
  });

  const plot = confidencePlot($predictions);
  plot.title = 'confidences';

  dash.page(title).sidebar(input).use(classifier, [label, plot]);
}
