/**
 * onnxClassifier — a Marcelle model that runs an exported ONNX bundle in the page, with
 * onnxruntime-web's WebAssembly backend. Nothing is sent anywhere: the model file comes from
 * the app's own static files, and so does ORT's .wasm (no CDN), so once loaded the page
 * predicts offline.
 *
 * ```js
 * const classifier = onnxClassifier({ bundle: 'onnx/digits/' });   // setBundle('onnx/other/') to switch
 * const $predictions = input.$images
 *   .map((img) => classifier.predict(img).catch(() => null)) // errors are shown in its view
 *   .awaitPromises()
 *   .filter(Boolean);
 * dash.page('ONNX').sidebar(input).use(classifier, confidencePlot($predictions));
 * ```
 *
 * A bundle is what `marcelle-torch export-onnx` writes: `model.json` (labels, input schema,
 * ONNX input/output names, byte size, sha256) and `model.onnx`. The drawn image goes in as
 * the raw canvas (grey levels in [0, 1], shape [1, 1, size, size]): the model does its own
 * preprocessing, exactly as it does behind Ray Serve.
 *
 * Why not Marcelle's `onnxModel`: its classification output expects a separate `label`
 * tensor (the scikit-learn exporter's layout), its 'generic' input flattens nested arrays
 * (slow for 16k pixels), its 'image' input is not implemented in 0.6.5, and it does not let
 * the app choose where ORT's .wasm comes from.
 *
 * A bundle may change where it is served (a model version published, then rolled back):
 * `reload()` reads model.json again and loads the bundle anew when its version (or its model
 * file's sha256) changed; with `refresh: ms`, the view does so whenever it is shown and every
 * `ms` while it is. Predictions wait for a reload under way and use the new model.
 *
 * Streams: `$status` ('loading' | 'ready' | 'predicting' | 'error'), `$progress` (0..1 of the
 * download), `$error`, `$metadata` (model.json), `$version` (the loaded bundle's model version),
 * `$backend` (e.g. 'wasm (SIMD, 1 thread)'), `$latency` (last inference, ms), `$loadTime` (ms),
 * `$predictions` (ClassifierResults, with `modelVersion`: the version that made it), `$ready`,
 * and Marcelle's `$training` ('loading' -> 'loaded' | 'error'; it cannot be trained here).
 */
import { Stream, text } from '@marcellejs/core';
import * as ort from 'onnxruntime-web/wasm';
// Emitted by Vite into the build (dist/assets): ORT loads its runtime from the app itself. The
// Emscripten glue (.mjs) is its own file too: with threads, ORT starts its worker threads from
// that script, not from the app's bundle (onnxruntime-web 1.30.0,
// lib/wasm/wasm-utils-import.ts: importWasmModule uses the embedded module unless
// wasmPaths.mjs is given, and Emscripten's pthread workers load the module's own URL).
import ortWasmUrl from 'onnxruntime-web/ort-wasm-simd-threaded.wasm?url';
import ortMjsUrl from 'onnxruntime-web/ort-wasm-simd-threaded.mjs?url';
import { toTensor } from './image-tensor.js';
import { ExternalModel, escapeHtml } from './external-model.js';

ort.env.wasm.wasmPaths = { wasm: ortWasmUrl, mjs: ortMjsUrl };

// Runs after the session is created, so that the timed runs do not pay for first-run
// allocations, JIT tiers and cold caches: at least WARMUP_RUNS, and on until WARMUP_MS.
const WARMUP_RUNS = 10;
const WARMUP_MS = 150;

/**
 * WASM threads for `threads` ('auto' or a number): threads need a cross-origin isolated page
 * (COOP/COEP, sent by the app's servers); without it ORT runs one thread. 'auto' is
 * DEFAULT_THREADS capped by the cores: the digits model is ~160 small nodes, where
 * thread hand-offs cost about what they save (bench/out/parity.md has both figures).
 */
export const DEFAULT_THREADS = 1;
let runtimeStarted = false; // ORT reads env.wasm once, when its first session starts the runtime
export function wasmThreads(threads = 'auto') {
  if (!globalThis.crossOriginIsolated) return 1;
  const cores = navigator.hardwareConcurrency || 1;
  const wanted = threads === 'auto' || threads == null ? DEFAULT_THREADS : Number(threads);
  return Math.max(1, Math.min(Number.isFinite(wanted) ? Math.floor(wanted) : 1, cores, 16));
}

/** A bundle folder's URL, relative to the page (so the app works under any base path). */
function bundleUrl(bundle) {
  return new URL(bundle.endsWith('/') ? bundle : `${bundle}/`, window.location.href).href;
}

/** A bundle load overtaken by a newer one. */
class Superseded extends Error {}

async function sha256Hex(bytes) {
  if (!globalThis.crypto?.subtle) return null; // not a secure context (plain http on a remote host)
  const digest = await crypto.subtle.digest('SHA-256', bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

export class OnnxClassifier extends ExternalModel {
  constructor({ bundle, title, threads = 'auto', refresh = 0 } = {}) {
    super('onnxClassifier', 'the model is a static ONNX bundle served by the app');
    if (!bundle) throw new Error('onnxClassifier: `bundle` (the folder of model.json and model.onnx) is required');
    this.bundleUrl = bundleUrl(bundle);
    this.title = title ?? 'onnx model (in the browser)';
    this.serviceName = 'onnx-bundles';
    this.labels = [];
    this.session = null;
    this.$status = new Stream('loading', true);
    this.$progress = new Stream(0, true);
    this.$ready = new Stream(false, true);
    this.$error = new Stream(null, true);
    this.$metadata = new Stream(null, true);
    this.$version = new Stream(null, true);
    this.refresh = refresh;
    this.refreshTimer = null;
    this.reloading = null;
    this.$backend = new Stream(null, true);
    // What the runtime really uses, read back from ORT once the session exists:
    // {ep, threads, simd, isolated} (also the view's data- attributes).
    this.$runtime = new Stream(null, true);
    this.threads = threads;
    this.$latency = new Stream(null, true);
    this.$loadTime = new Stream(null, true);
    this.$predictions = new Stream(Stream.never(), false);
    this.view = text('');
    this.start();
    this.loaded = this.loadBundle().catch(() => null);
  }

  /** Load another bundle and predict with it from now on (a load under way is abandoned). */
  setBundle(bundle) {
    const url = bundleUrl(bundle);
    if (url === this.bundleUrl) return this.loaded;
    this.bundleUrl = url;
    this.loaded = this.loadBundle().catch(() => null);
    return this.loaded;
  }

  /** model.json, then model.onnx (with download progress and its sha256 checked), then the session. */
  async loadBundle() {
    const started = performance.now();
    const url = this.bundleUrl;
    // A newer setBundle() wins: this load then stops at its next step and changes nothing.
    const current = () => {
      if (url !== this.bundleUrl) throw new Superseded();
    };
    this.session = null;
    this.$metadata.set(null);
    this.$loadTime.set(null);
    this.$progress.set(0);
    this.$training.set({ status: 'loading' });
    this.$status.set('loading');
    try {
      const metadata = await this.fetchJson(new URL('model.json', url).href);
      current();
      const onnx = metadata.onnx ?? {};
      if (!Array.isArray(metadata.labels) || !onnx.file || !onnx.input_name || !onnx.output_name) {
        throw new Error(`${this.bundleUrl}model.json is not a marcelle-torch ONNX bundle (labels, onnx.file, names)`);
      }
      if (metadata.input?.kind !== 'image') {
        throw new Error(
          `model ${metadata.name} takes ${metadata.input?.kind ?? 'unknown'} input; this page feeds images`,
        );
      }
      this.$metadata.set(metadata);
      this.labels = metadata.labels;
      this.$version.set(metadata.version === undefined || metadata.version === null ? null : String(metadata.version));
      const bytes = await this.fetchBytes(new URL(onnx.file, url).href, onnx.bytes);
      current();
      const digest = await sha256Hex(bytes);
      if (digest !== null && onnx.sha256 && digest !== onnx.sha256) {
        throw new Error(
          `${onnx.file} does not match model.json (sha256 ${digest.slice(0, 12)}…, ` +
            `expected ${onnx.sha256.slice(0, 12)}…): re-export the bundle`,
        );
      }
      if (!runtimeStarted) ort.env.wasm.numThreads = wasmThreads(this.threads);
      runtimeStarted = true;
      const session = await ort.InferenceSession.create(bytes, {
        executionProviders: ['wasm'],
        graphOptimizationLevel: 'all',
      });
      current();
      this.session = session;
      const simd = ort.env.wasm.simd !== false;
      const threads = ort.env.wasm.numThreads; // ORT sets it back to 1 when threads are not possible
      this.$runtime.set({ ep: 'wasm', threads, simd, isolated: Boolean(globalThis.crossOriginIsolated) });
      this.$backend.set(`wasm (${simd ? 'SIMD' : 'no SIMD'}, ${threads} thread${threads === 1 ? '' : 's'})`);
      await this.warmUp();
      current();
      this.$loadTime.set(performance.now() - started);
      this.$training.set({ status: 'loaded', data: { source: 'url', url } });
      this.$error.set(null);
      this.$status.set('ready');
      this.$ready.set(true);
      return metadata;
    } catch (error) {
      // Overtaken by a newer bundle (its own load reports its own errors).
      if (error instanceof Superseded || url !== this.bundleUrl) return null;
      const message = error?.message ?? String(error);
      this.$error.set(message);
      this.$status.set('error');
      this.$training.set({ status: 'error', data: { message } });
      throw error;
    }
  }

  /**
   * Read the bundle's model.json again, and load the bundle anew when its model changed (another
   * version, or another model file); resolves with true when it did. A failed check changes nothing.
   */
  reload() {
    if (!this.reloading) {
      this.reloading = this.reloadIfChanged().finally(() => {
        this.reloading = null;
      });
    }
    return this.reloading;
  }

  async reloadIfChanged() {
    await this.settled();
    const url = this.bundleUrl;
    let metadata;
    try {
      metadata = await this.fetchJson(new URL('model.json', url).href);
    } catch {
      return false; // the server is away for a moment: keep the model loaded
    }
    const loaded = this.$metadata.get();
    const same =
      loaded &&
      this.session &&
      String(loaded.version) === String(metadata?.version) &&
      loaded.onnx?.sha256 === metadata?.onnx?.sha256;
    if (same || url !== this.bundleUrl) return false;
    this.loaded = this.loadBundle().catch(() => null);
    await this.loaded;
    return true;
  }

  /** Resolves once the newest load has ended (a reload or setBundle under way replaces `loaded`). */
  async settled() {
    for (let pending = null; pending !== this.loaded;) {
      pending = this.loaded;
      await pending;
    }
  }

  /** Runs on a blank input until both WARMUP_RUNS and WARMUP_MS are reached. */
  async warmUp() {
    const input = new Float32Array(this.inputLength);
    const started = performance.now();
    for (let i = 0; i < WARMUP_RUNS || performance.now() - started < WARMUP_MS; i += 1) {
      // One run after another on purpose: the warm-up times the runtime, not a queue of runs.
      await this.run(input);
    }
  }

  get inputShape() {
    const { channels = 1, size } = this.$metadata.get().input;
    return [1, channels, size, size];
  }

  get inputLength() {
    return this.inputShape.reduce((a, b) => a * b, 1);
  }

  async fetchJson(url) {
    const response = await this.fetchOk(url);
    try {
      return await response.json();
    } catch {
      throw new Error(`${url} is not JSON`);
    }
  }

  async fetchOk(url) {
    let response;
    try {
      // Revalidated each time: a published version replaces the bundle at the same URL.
      response = await fetch(url, { cache: 'no-cache' });
    } catch (error) {
      throw new Error(`cannot fetch ${url}: ${error.message}`);
    }
    if (!response.ok) {
      const hint = response.status === 404 ? ' (run `marcelle-torch export-onnx` before building the app)' : '';
      throw new Error(`${url}: HTTP ${response.status}${hint}`);
    }
    return response;
  }

  /** The model file, reporting download progress on `$progress`. */
  async fetchBytes(url, expectedBytes) {
    const response = await this.fetchOk(url);
    const total = Number(response.headers.get('Content-Length')) || expectedBytes || 0;
    if (!response.body || !total) {
      const buffer = new Uint8Array(await response.arrayBuffer());
      this.$progress.set(1);
      return buffer;
    }
    const reader = response.body.getReader();
    const chunks = [];
    let received = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      received += value.length;
      this.$progress.set(Math.min(1, received / total));
    }
    const bytes = new Uint8Array(received);
    let offset = 0;
    for (const chunk of chunks) {
      bytes.set(chunk, offset);
      offset += chunk.length;
    }
    this.$progress.set(1);
    return bytes;
  }

  async run(data) {
    const { onnx } = this.$metadata.get();
    const feeds = { [onnx.input_name]: new ort.Tensor('float32', data, this.inputShape) };
    const outputs = await this.session.run(feeds);
    return outputs[onnx.output_name].data;
  }

  /** An image (ImageData, canvas, <img>) or a Float32Array of the input's size -> {label, confidences}. */
  async predict(x) {
    await this.settled();
    if (!this.session) {
      throw new Error(this.$error.get() ?? 'the ONNX model is not loaded');
    }
    const { size, channels = 1, range = [0, 1] } = this.$metadata.get().input;
    // The same tensor the server would make from this image (the spec's channels and range).
    const data = x instanceof Float32Array ? x : toTensor(x, size, { channels, range });
    this.$status.set('predicting');
    const started = performance.now();
    let probabilities;
    try {
      probabilities = await this.run(data);
    } catch (error) {
      this.$error.set(`inference failed: ${error.message}`);
      this.$status.set('error');
      throw error;
    }
    this.$latency.set(performance.now() - started);
    const confidences = {};
    let best = 0;
    this.labels.forEach((label, i) => {
      confidences[label] = probabilities[i];
      if (probabilities[i] > probabilities[best]) best = i;
    });
    this.$error.set(null);
    this.$status.set('ready');
    const result = { label: this.labels[best], confidences };
    if (this.$version.get() !== null) result.modelVersion = this.$version.get();
    this.lastPrediction = result;
    this.$predictions.set(result);
    return result;
  }

  viewStreams() {
    return [
      this.$status,
      this.$error,
      this.$metadata,
      this.$version,
      this.$progress,
      this.$backend,
      this.$runtime,
      this.$loadTime,
      this.$predictions,
    ];
  }

  /** The view; with `refresh`, the bundle is checked now and every `refresh` ms while it is shown. */
  mount(target) {
    super.mount(target);
    if (!this.unmount || !(this.refresh > 0)) return;
    this.reload().catch(() => {});
    this.refreshTimer = setInterval(() => {
      if (!document.hidden) this.reload().catch(() => {});
    }, this.refresh);
  }

  destroy() {
    clearInterval(this.refreshTimer);
    this.refreshTimer = null;
    super.destroy();
  }

  /** The runtime hook: `data-backend` (text), `data-ep`, `data-threads`, `data-simd`, `data-isolated`. */
  runtimeHook() {
    const rt = this.$runtime.get();
    const attrs = rt
      ? ` data-ep="${escapeHtml(rt.ep)}" data-threads="${rt.threads}" data-simd="${rt.simd}" data-isolated="${rt.isolated}"`
      : '';
    return ` <span data-testid="onnx-model-backend" data-backend="${escapeHtml(this.$backend.get() ?? '')}"${attrs}></span>`;
  }

  /** The small view: status, download progress, runtime backend, what the model is. */
  render() {
    const status = this.$status.get();
    const error = this.$error.get();
    const meta = this.$metadata.get();
    const progress = this.$progress.get();
    const rows = [['bundle', this.bundleUrl]];
    if (meta) {
      rows.push(['model', `${meta.name} v${meta.version}`]);
      rows.push(['file', `${meta.onnx.file} (${(meta.onnx.bytes / 1e6).toFixed(2)} MB, opset ${meta.onnx.opset})`]);
      rows.push(['labels', meta.labels.join(' ')]);
      if (meta.description) rows.push(['about', meta.description]);
    }
    if (this.$backend.get())
      rows.push(['runtime', `onnxruntime-web ${ort.env.versions?.web ?? ''} ${this.$backend.get()}`]);
    if (this.$loadTime.get() !== null) rows.push(['loaded in', `${this.$loadTime.get().toFixed(0)} ms`]);
    const bar =
      status === 'loading'
        ? `<progress data-testid="onnx-model-progress" max="1" value="${progress}" style="width:100%"></progress>`
        : '';
    return this.renderPanel({
      testid: 'onnx-model',
      attributes: ` data-version="${escapeHtml(this.$version.get() ?? '')}"`,
      status,
      error,
      rows,
      besideStatus: this.runtimeHook(),
      belowStatus: bar,
      prediction: this.lastPrediction,
    });
  }
}

export function onnxClassifier(options) {
  return new OnnxClassifier(options);
}
