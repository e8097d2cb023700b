/**
 * Training in the loop — teach the served model a new class from the page.
 *
 * Draw an example, label it and add it to a Marcelle dataset kept in the backend; train (a
 * training run: a worker fine-tunes the model on the dataset and streams Marcelle's training
 * status, shown by trainingProgress and trainingPlot); publish the new version, or roll back:
 * Ray Serve, the workers and the ONNX bundle then answer with it, and the page shows which
 * version of the model Ray Serve predicts the drawing with. `config.model` is the model taught
 * (`digits` when not given).
 */
import { imageInput, rayModel, runClient } from 'marcelle-torch';
import { teachPanel } from '../teach-panel.js';

export const title = 'Teach';
export const order = 4;

export default function teachPage(dash, config) {
  const input = imageInput();
  const model = config.model ?? 'digits';
  const serve = rayModel({ url: config.serveUrl, model });
  // A client of its own, with a long memory: the versions are the user's training runs.
  const client = runClient({ backendUrl: config.backendUrl, historySize: 100 });
  const panel = teachPanel({ client, serve, input, model, epochs: config.teachEpochs ?? 15 });
  dash.page(title).sidebar(input).use(panel);
}
