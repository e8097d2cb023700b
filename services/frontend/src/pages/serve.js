/**
 * Solution 1 — server-side inference with Ray Serve.
 *
 * The drawing (or uploaded image) goes to the Serve application over HTTP through the
 * `rayModel` component; its predictions feed Marcelle's confidence plot like any model's.
 */
import { confidencePlot, text } from '@marcellejs/core';
import { drawingInput } from '../components/drawing-input.js';
import { rayModel } from '../components/ray-model.js';
import { escapeHtml, predictionsOf } from '../components/served-model.js';

export const title = 'Ray Serve';
export const order = 1;

function formatLabel({ label, confidences }) {
  const p = confidences[label];
  const confidence = typeof p === 'number' ? ` <span style="color:#6b7280">(${(100 * p).toFixed(1)}%)</span>` : '';
  const safe = escapeHtml(label);
  return (
    `<p>Predicted label: <code data-testid="serve-label" data-label="${safe}" data-confidence="${p}" ` +
    `style="font-size:2rem">${safe}</code>${confidence}</p>`
  );
}

export default function servePage(dash, config) {
  const input = drawingInput();
  const classifier = rayModel({ url: config.serveUrl, model: config.model });

  const $predictions = predictionsOf(input.$images, classifier);

  const label = text('Draw a digit on the left: Ray Serve predicts it.');
  label.title = 'prediction';
  $predictions.subscribe((prediction) => label.$value.set(formatLabel(prediction)));

  const plot = confidencePlot($predictions);
  plot.title = 'confidences';

  dash.page(title).sidebar(input).use(classifier, [label, plot]);
}
