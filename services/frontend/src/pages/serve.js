/**
 * Solution 1 — server-side inference with Ray Serve.
 *
 * The image (drawn, uploaded or from the webcam) goes to the Serve application over HTTP
 * through the `rayModel` component; its predictions feed Marcelle's confidence plot like any
 * model's. The picker offers every image model Serve lists (`GET /v1/models`);
 * `config.model` is the one picked first, when Serve has it.
 */
import { confidencePlot, text } from '@marcellejs/core';
import { describeModel, escapeHtml, imageInput, modelPicker, predictionsOf, rayModel } from 'marcelle-torch';

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
  const input = imageInput();
  const classifier = rayModel({ url: config.serveUrl, model: config.model ?? null });
  const picker = modelPicker({ testid: 'serve-model-picker', empty: 'waiting for Ray Serve' });
  classifier.$models.subscribe((models) =>
    picker.setChoices(
      models.filter((m) => m.input?.kind === 'image').map((m) => ({ value: m.name, label: describeModel(m) })),
      classifier.model,
    ),
  );
  classifier.$model.subscribe((name) => name && picker.choose(name));
  picker.$value.subscribe((name) => name && classifier.setModel(name));
  classifier.$metadata.subscribe((metadata) => metadata && input.follow(metadata.input));

  const $predictions = predictionsOf(input.$images, classifier);

  const label = text('Give the model an image on the left: Ray Serve predicts it.');
  label.title = 'prediction';
  $predictions.subscribe((prediction) => label.$value.set(formatLabel(prediction)));

  const plot = confidencePlot($predictions);
  plot.title = 'confidences';

  dash.page(title).sidebar(picker, input).use(classifier, [label, plot]);
}
