/**
 * Solution 3 — server-side inference through the Marcelle backend.
 *
 * The page creates a *run* in the backend's `runs` data service (Marcelle's dataStore); a
 * Python worker claims it, runs the model and patches progress, intermediate images and the
 * result into it, which the page shows as they arrive. Suited to long inference, such as the
 * many denoising steps of the digits generator; the worker needs no open port. The models
 * offered are those the connected workers serve; `config.model` and `config.generatorModel`
 * are picked first when served.
 */
import { imageInput, runClient, runsHistory } from 'marcelle-torch';
import { describe, runPanel } from '../run-panel.js';

export const title = 'Backend runs';
export const order = 3;

export default function runsPage(dash, config) {
  const input = imageInput();
  const client = runClient({ backendUrl: config.backendUrl });
  const panel = runPanel({
    client,
    generatorModel: config.generatorModel ?? null,
    classifierModel: config.model ?? null,
    input,
  });
  dash.page(title).sidebar(input).use(panel, runsHistory(client, { describe }));
}
