/**
 * rayModel — a Marcelle model whose inference runs in a Ray Serve application.
 *
 * It looks like Marcelle's own models (it extends `Model`): `predict(x)` resolves to
 * `ClassifierResults` `{ label, confidences }`, so `confidencePlot`, `batchPrediction` and
 * friends take it as they take `mobileNet()` or `onnxModel()`.
 *
 * ```js
 * const classifier = rayModel({ url: 'http://127.0.0.1:8000', model: 'digits' });
 * const $predictions = input.$images
 *   .map((img) => classifier.predict(img).catch(() => null)) // errors are shown in its view
 *   .awaitPromises()
 *   .filter(Boolean);
 * dash.page('Ray Serve').sidebar(input).use(classifier, confidencePlot($predictions));
 * ```
 *
 * `model` may be left out: the model is then the first image model Serve lists. `setModel(name)`
 * switches to another one (a picker fed by `$models`).
 *
 * HTTP contract (KServe v1 style; docs/reference/http-api.md has every route):
 * - `GET  {url}/v1/models` -> `{models: [metadata]}` (labels, input schema, version, device);
 *   polled until it answers, so the view says when the model is ready;
 * - `POST {url}/v1/models/{model}:predict` `{"instances": [x]}` ->
 *   `{"predictions": [{label, confidences}], "model_version": "..."}` (the version that answered);
 * - errors are JSON `{"error": {"code", "message"}}`: the message is shown as is.
 *
 * `predict(x)` takes an image (ImageData, canvas, <img>: sent as a base64 PNG `{b64}` of
 * `inputSize` pixels) or an instance already in the contract's shape (`{b64}`, a nested array).
 * It rejects with an `Error` whose message says what went wrong (and sets `$error`).
 *
 * Streams:
 * - `$status`: 'connecting' | 'ready' | 'predicting' | 'unavailable' | 'error'
 * - `$ready`: boolean, true once the model answered (metadata or a prediction)
 * - `$error`: the last error message, or null after a success
 * - `$metadata`: the model's metadata (null until known)
 * - `$models`: the metadata of every model Serve lists ([] until known)
 * - `$model`: the model's name (null until one is picked)
 * - `$predictions`: every prediction made, as ClassifierResults, with `modelVersion` (the version
 *   of the model that answered it, when Serve says)
 * - `$version`: the version that answered the last prediction (the metadata's until then): a
 *   published version changes it without a restart, and the metadata (labels) is read again
 * - `$training`: Marcelle's training status ('loading' -> 'loaded' | 'error'); it cannot be trained here.
 */
import { Stream, text } from '@marcellejs/core';
import { INPUT_SIZE, isImage as isDrawable, toInstance } from './image-tensor.js';
import { ExternalModel, escapeHtml } from './external-model.js';

const RETRY_MIN_MS = 1000;
const RETRY_MAX_MS = 30000;

/** An HTTP answer that was not a success, with the server's own message when it sent one. */
export class RayServeError extends Error {
  constructor(message, { status = 0, code = 'network' } = {}) {
    super(message);
    this.name = 'RayServeError';
    this.status = status;
    this.code = code;
  }
}

export class RayModel extends ExternalModel {
  constructor({ url, model = null, inputSize = INPUT_SIZE, timeout = 30000, title } = {}) {
    super('rayModel', 'the model lives in Ray Serve');
    if (!url) throw new Error('rayModel: `url` (the Ray Serve address) is required');
    this.title = title ?? 'ray serve model';
    this.serviceName = 'ray-serve-models';
    // Relative URLs ("/serve" behind the chart's nginx) resolve against the page.
    this.url = new URL(url, window.location.href).href.replace(/\/+$/, '');
    this.model = model;
    this.inputSize = inputSize;
    this.timeout = timeout;
    this.labels = [];
    this.$status = new Stream('connecting', true);
    this.$ready = new Stream(false, true);
    this.$error = new Stream(null, true);
    this.$metadata = new Stream(null, true);
    this.$models = new Stream([], true);
    this.$model = new Stream(model, true);
    this.$predictions = new Stream(Stream.never(), false);
    this.$version = new Stream(null, true);
    this.$latency = new Stream(null, true);
    this.view = text('');
    this.start();
    this.retryDelay = RETRY_MIN_MS;
    this.retryTimer = null;
    this.connect();
  }

  get endpoint() {
    return `${this.url}/v1/models/${encodeURIComponent(this.model)}`;
  }

  /**
   * Ask Serve for its models and this model's metadata; on failure, say why and try again
   * later (backing off).
   */
  async connect() {
    clearTimeout(this.retryTimer);
    this.$training.set({ status: 'loading' });
    try {
      const listing = await this.request(`${this.url}/v1/models`, { method: 'GET' });
      const models = Array.isArray(listing.models) ? listing.models.filter((m) => m && typeof m.name === 'string') : [];
      if (this.model === null) {
        const first = models.find((m) => m.input?.kind === 'image');
        if (!first) throw new RayServeError(`Ray Serve at ${this.url} serves no image model`, { status: 404 });
        this.model = first.name;
      }
      this.$models.set(models);
      if (this.$model.get() !== this.model) this.$model.set(this.model);
      // A model Serve does not list: its own answer says why (404, naming the models it has).
      const metadata =
        models.find((m) => m.name === this.model) ?? (await this.request(this.endpoint, { method: 'GET' }));
      this.useMetadata(metadata);
      this.markReady();
      this.$training.set({ status: 'loaded', data: { source: 'url', url: this.endpoint } });
      this.retryDelay = RETRY_MIN_MS;
      return metadata;
    } catch (error) {
      // A failed prediction's 'error' stays until Serve answers again: a background retry
      // must not turn it back into 'unavailable' while the page shows that prediction's error.
      this.fail(error, this.$status.get() === 'error' ? 'error' : 'unavailable');
      this.$training.set({ status: 'error', data: { message: error.message } });
      if (error.status !== 404) {
        // Serve may still be starting (503) or not up yet: keep trying, less and less often.
        this.retryTimer = setTimeout(() => this.connect(), this.retryDelay);
        this.retryDelay = Math.min(this.retryDelay * 2, RETRY_MAX_MS);
      }
      return null;
    }
  }

  useMetadata(metadata) {
    this.labels = Array.isArray(metadata.labels) ? metadata.labels : [];
    // Images are sent at the model's own size: the server then has nothing to resize.
    if (metadata.input?.kind === 'image' && Number.isInteger(metadata.input.size)) this.inputSize = metadata.input.size;
    this.$metadata.set(metadata);
    // A prediction says which version answered it; the metadata only until the first one.
    if (!this.versionAnswered) this.setVersion(metadata.version);
  }

  setVersion(version) {
    const value = version === undefined || version === null ? null : String(version);
    if (value !== this.$version.get()) this.$version.set(value);
  }

  /** Predict with another of Serve's models from now on. */
  setModel(name) {
    if (!name || name === this.model) return;
    this.model = name;
    this.$model.set(name);
    this.$metadata.set(null);
    this.$version.set(null);
    this.versionAnswered = false;
    this.lastPrediction = null;
    this.$status.set('connecting');
    this.connect();
  }

  async predict(x) {
    if (this.model === null) await this.connect();
    if (this.model === null) throw new RayServeError(this.$error.get() ?? 'no model to predict with yet');
    const instance = isDrawable(x) ? toInstance(x, this.inputSize) : x;
    this.$status.set('predicting');
    const started = performance.now();
    let body;
    try {
      body = await this.request(`${this.endpoint}:predict`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ instances: [instance] }),
      });
    } catch (error) {
      this.fail(error, 'error');
      throw error;
    }
    const prediction = Array.isArray(body.predictions) ? body.predictions[0] : undefined;
    if (!prediction || typeof prediction.label === 'undefined' || typeof prediction.confidences !== 'object') {
      const error = new RayServeError(
        `Ray Serve answered without a {label, confidences} prediction for ${this.model}`,
        {
          status: 200,
          code: 'bad_response',
        },
      );
      this.fail(error, 'error');
      throw error;
    }
    this.$latency.set(performance.now() - started);
    this.markReady();
    const answered = body.model_version ?? prediction.model_version;
    const modelVersion = answered === undefined || answered === null ? null : String(answered);
    const known = this.$metadata.get();
    // Another version answered (a publish or a rollback): its labels may differ, read them again.
    if (!known || (modelVersion !== null && String(known.version) !== modelVersion)) this.connect();
    if (modelVersion !== null) {
      this.versionAnswered = true;
      this.setVersion(modelVersion);
    }
    const result = { label: String(prediction.label), confidences: prediction.confidences };
    if (modelVersion !== null) result.modelVersion = modelVersion;
    this.lastPrediction = result;
    this.$predictions.set(result);
    return result;
  }

  /** fetch + JSON, with a timeout; any failure becomes a RayServeError with a one-line message. */
  async request(url, init) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), this.timeout);
    let response;
    try {
      response = await fetch(url, { ...init, signal: controller.signal });
    } catch (error) {
      if (error.name === 'AbortError') {
        throw new RayServeError(`no answer from Ray Serve at ${this.url} within ${this.timeout / 1000} s`, {
          code: 'timeout',
        });
      }
      // The browser hides the reason: refused connection, DNS, or a CORS refusal all look alike.
      throw new RayServeError(
        `cannot reach Ray Serve at ${this.url} (is it running, and does its CORS allow-list ` +
          `include ${window.location.origin}?)`,
      );
    } finally {
      clearTimeout(timer);
    }
    const raw = await response.text();
    let body = null;
    try {
      body = raw ? JSON.parse(raw) : null;
    } catch {
      // Not JSON (a proxy's HTML error page, say): reported below with its first characters.
    }
    if (!response.ok) {
      const err = body && body.error;
      if (err && err.message) {
        throw new RayServeError(`${err.message} (HTTP ${response.status}, ${err.code ?? 'error'})`, {
          status: response.status,
          code: err.code ?? 'error',
        });
      }
      throw new RayServeError(
        `Ray Serve answered HTTP ${response.status}: ${raw.slice(0, 200) || response.statusText}`,
        {
          status: response.status,
          code: 'http',
        },
      );
    }
    if (body === null || typeof body !== 'object') {
      throw new RayServeError(`Ray Serve answered HTTP ${response.status} with a body that is not JSON`, {
        status: response.status,
        code: 'bad_response',
      });
    }
    return body;
  }

  markReady() {
    this.$error.set(null);
    this.$status.set('ready');
    if (!this.$ready.get()) this.$ready.set(true);
  }

  fail(error, status) {
    this.$error.set(error.message);
    this.$status.set(status);
    if (this.$ready.get()) this.$ready.set(false);
  }

  viewStreams() {
    return [this.$status, this.$error, this.$metadata, this.$version, this.$latency, this.$predictions];
  }

  /** The small view: status, the server's error message, what the model is. */
  render() {
    const status = this.$status.get();
    const error = this.$error.get();
    const meta = this.$metadata.get();
    const latency = this.$latency.get();
    const rows = [
      ['server', this.url],
      ['model', this.model ?? '(the first image model Serve lists)'],
    ];
    if (meta) {
      rows.push(['version', this.$version.get() ?? meta.version ?? '?']);
      if (meta.device) rows.push(['device', meta.device]);
      if (meta.input) rows.push(['input', JSON.stringify(meta.input)]);
      if (Array.isArray(meta.labels)) rows.push(['labels', meta.labels.join(' ')]);
      if (meta.description) rows.push(['about', meta.description]);
    }
    if (latency !== null) rows.push(['last request', `${latency.toFixed(0)} ms`]);
    return this.renderPanel({
      testid: 'ray-model',
      attributes: ` data-model="${escapeHtml(this.model ?? '')}" data-version="${escapeHtml(this.$version.get() ?? '')}"`,
      status,
      error,
      rows,
      prediction: this.lastPrediction,
    });
  }
}

export function rayModel(options) {
  return new RayModel(options);
}
