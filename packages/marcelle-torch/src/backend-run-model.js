/**
 * backendRunModel — a Marcelle model whose inference is a *run* in the Marcelle backend.
 *
 * `predict(input, params)` creates a run (a document of the backend's `runs` service) for
 * `model`; a worker (`marcelle-torch worker`) claims it, patches its progress and intermediate
 * results, and the promise resolves with the run's `result` when it succeeds (it rejects when
 * the run fails or is canceled, and the error is shown with Marcelle's notifications). Suited
 * to long inference (generation, many steps); the worker needs no open port.
 *
 * ```js
 * const generator = backendRunModel({ url: 'http://127.0.0.1:3030', model: 'digits-generator' });
 * // or backendRunModel({ dataStore: dataStore('http://127.0.0.1:3030'), model: 'digits-generator' })
 * const result = await generator.predict({ digit: 3 }, { steps: 50 });
 * generator.$progress.subscribe((p) => ...);   // 0..1
 * generator.cancel();                          // the current run
 * dash.page('Runs').use(generator, runsHistory(generator));
 *
 * const teacher = backendRunModel({ dataStore: store, model: 'digits' });
 * const { version } = await teacher.train(dataset('teach', store), { epochs: 10 }); // $training follows
 * await teacher.publish(version);   // Serve, the workers and the ONNX bundle answer with it
 * await teacher.publish(null);      // back to the model's own weights
 * ```
 *
 * `input` is sent as is (a JSON value), except an image (ImageData, canvas, <img>), which is
 * sent as `{b64}` (a PNG) at its own size. `model` may be left out: the first model the
 * connected workers serve is used (`$models`; `setModel(name)` picks another).
 *
 * Streams: `$status` ('idle' | 'pending' | 'running' | 'succeeded' | 'failed' | 'canceled'),
 * `$progress` (0..1), `$partial` (the run's last intermediate result: an image as a data URL, or
 * any JSON, such as a training run's TrainingStatus; or null), `$run`
 * (the followed run document, or null), `$result`, `$error`, `$connection` (the backend
 * connection: 'idle' | 'connecting' | 'login' | 'ready' | ...), `$models` (what the connected
 * workers serve), `$model` (the model's name), `$runs` (recent runs, newest first), and
 * Marcelle's `$training` ('loaded'; during `train()`, the training run's TrainingStatus).
 *
 * Its view is made of Marcelle's widgets: a `progressBar` with the status, an `imageDisplay` of
 * the run's image (the result's `image` when it has one, else the last intermediate image), a
 * Cancel `button`, and the run's error. Hooks (`data-testid`, default prefix `run`): run-status
 * (data-status), run-progress (data-progress), run-image (data-kind: 'partial' | 'result', the
 * image to show; data-src, its data URL; data-drawn: the kind the display has drawn, once decoded),
 * run-cancel, run-error.
 */
import { Stream, button, imageDisplay, progressBar, throwError } from '@marcellejs/core';
import { ExternalModel } from './external-model.js';
import { ACTIVE, RunClient } from './run-client.js';
import { fromDataURL, isImage, toInstance } from './image-tensor.js';
import { STATUS_TEXT as RUN_STATUS_TEXT } from './runs-history.js';

export const TERMINAL = ['succeeded', 'failed', 'canceled'];

const STATUS_TEXT = { idle: 'no run yet', ...RUN_STATUS_TEXT };

/** `value` when it is an image's data URL (a run's partial may be any JSON), else null. */
function imageURL(value) {
  return typeof value === 'string' && value.startsWith('data:image/') ? value : null;
}

/** A run that ended without a result. */
export class RunError extends Error {
  constructor(run) {
    super(
      run.status === 'canceled' ? `run ${run.id} was canceled` : `run ${run.id} failed: ${run.error ?? 'no reason'}`,
    );
    this.name = 'RunError';
    this.run = run;
  }
}

export class BackendRunModel extends ExternalModel {
  constructor({ dataStore = null, url = null, model = null, service = 'runs', title, testid = 'run', client } = {}) {
    super('backendRunModel', 'it runs in a worker of the Marcelle backend');
    this.title = title ?? (model ? `${model} (backend runs)` : 'backend runs');
    this.client = client ?? new RunClient({ backendUrl: url ?? undefined, dataStore, service });
    this.testid = testid;
    this.$model = new Stream(model, true);
    this.$status = new Stream('idle', true);
    this.$progress = new Stream(0, true);
    this.$partial = new Stream(null, true);
    this.$run = new Stream(null, true);
    this.$result = new Stream(null, true);
    this.$error = new Stream(null, true);
    this.$connection = this.client.$status;
    this.$models = this.client.$models;
    this.$runs = this.client.$runs;
    this.$progressBar = new Stream({ type: 'idle', message: STATUS_TEXT.idle, progress: 0 }, true);
    this.$training.set({ status: 'loaded' });
    this.waiting = new Map(); // run id -> {resolve, reject}
    this.history = []; // the training run's logs, one object per epoch
    this.lastTraining = null;
    this.client.$runs.subscribe(() => this.follow());
    this.$run.subscribe((run) => this.show(run));
    this.progress = progressBar(this.$progressBar);
    this.progress.title = '';
    /** The run's image as ImageData, for the view's imageDisplay. */
    this.$image = new Stream([], true);
    this.shownImage = null; // the data URL on show, or being decoded for it
    this.drawn = null; // the kind of image drawn: partial or result
    this.imageDisplay = imageDisplay(this.$image);
    this.imageDisplay.title = '';
    this.cancelButton = button('Cancel');
    this.cancelButton.title = '';
    this.cancelButton.$type.set('danger');
    this.cancelButton.$disabled.set(true);
    this.cancelButton.$click.subscribe(() => this.cancel().catch(() => {}));
    this.start();
  }

  get model() {
    return this.$model.get() ?? this.client.$models.get()[0]?.name ?? null;
  }

  setModel(name) {
    this.$model.set(name);
  }

  /** Connect to the backend now (predict() does it when needed). */
  connect() {
    return this.client.start();
  }

  /** Create a run of the model on `input`; resolves with its result when it succeeds. */
  async predict(input, params = {}) {
    await this.client.start();
    const model = this.model;
    if (!model) throw this.report(new Error('backendRunModel: no model given, and no worker serves one yet'));
    const body = isImage(input) ? toInstance(input, input.width) : input;
    let run;
    try {
      run = await this.client.create(model, body, params);
    } catch (error) {
      throw this.report(new Error(`cannot create the run: ${error.message}`));
    }
    const done = new Promise((resolve, reject) => this.waiting.set(run.id, { resolve, reject }));
    this.$error.set(null);
    this.$partial.set(null); // the last run's intermediate image is not this one's
    this.$result.set(null);
    this.$run.set(run);
    this.follow();
    return done;
  }

  /**
   * Teach the model, as Marcelle's `Model.train(dataset)` does: a *training run* of it (a model
   * folder with a `train:` section) on a Marcelle `dataset` (kept in the backend: the run names it,
   * `input: {dataset: name}`, and the worker reads its instances) or on an array of instances
   * `{x, y}` (x: an image, a data URL or `{b64}`; y: its label; sent in the run). A new label adds
   * a class. The worker fine-tunes the model and streams Marcelle's TrainingStatus, which
   * `$training` follows (for `trainingPlot` / `trainingProgress`: `data` holds one value per epoch
   * of `loss`, `accuracy`, `lossVal`, `accuracyVal`); resolves with the new version
   * `{model, version, parent, labels, metrics, dataset}`.
   */
  async train(datasetOrExamples, { epochs } = {}) {
    const input = await this.trainingInput(datasetOrExamples);
    this.history = [];
    this.$training.set({ status: 'start', epochs });
    try {
      const version = await this.predict(input, { train: epochs ? { epochs } : {} });
      const done = this.history.length;
      this.$training.set({ status: 'success', epoch: done, epochs: epochs ?? done, data: this.historyData() });
      return version;
    } catch (error) {
      this.$training.set({ status: 'error', data: { message: error.message } });
      throw error;
    }
  }

  /** A training run's input: `{dataset: name}` for a Marcelle dataset, else `{examples: [{x, y}]}`. */
  async trainingInput(source) {
    if (source?.isDataset && typeof source.name === 'string') {
      await source.ready;
      if (source.$count?.get() === 0) {
        throw this.report(new Error(`backendRunModel.train: the dataset ${source.name} is empty`));
      }
      return { dataset: source.name };
    }
    if (!Array.isArray(source) || source.length === 0) {
      throw this.report(new Error('backendRunModel.train: give a Marcelle dataset, or examples [{x, y}, ...]'));
    }
    return { examples: source.map(({ x, y }) => ({ x: isImage(x) ? toInstance(x, x.width) : x, y })) };
  }

  /**
   * Publish `version` of the model (12 hex digits; null: back to the model's own weights): a
   * *publish run*, after which Serve, the workers and the app's ONNX bundle answer with it (the
   * backend lets only an admin create one when its authentication is on). Resolves with the run's
   * result `{model, version, previous}`; rejects with the run's error.
   */
  publish(version) {
    if (version !== null && (typeof version !== 'string' || !/^[0-9a-f]{12}$/.test(version))) {
      return Promise.reject(
        this.report(new Error(`backendRunModel.publish: a version is 12 hex characters (or null), got ${version}`)),
      );
    }
    return this.predict(null, { publish: version });
  }

  /** The training so far, one value per epoch of each log (for trainingPlot). */
  historyData() {
    const data = {};
    for (const key of ['loss', 'accuracy', 'lossVal', 'accuracyVal']) {
      const values = this.history.map((logs) => logs?.[key] ?? null);
      while (values.length && values.at(-1) === null) values.pop(); // the epoch under way has no val yet
      if (values.length) data[key] = values;
    }
    return data;
  }

  /**
   * A training run's partial (Marcelle's TrainingStatus, per batch, and the logs of each epoch at
   * its end) into `$training`. The worker sends only its newest status at its update rate, so an
   * epoch's end may be skipped: the history keeps each epoch's newest logs, and `data` is the
   * whole history (arrays, which trainingPlot draws as is), never a point per update.
   */
  followTraining(partial) {
    const { status, epoch, epochs, data } = partial;
    if (status === 'start') {
      // A resumed run starts after its saved epochs: their logs are not sent again.
      this.history = this.history.slice(0, Math.max(0, Number(epoch) || 0));
      this.$training.set({ status: 'start', epoch, epochs });
      return;
    }
    if (Number.isInteger(epoch) && epoch >= 1 && data && typeof data === 'object') {
      this.history[epoch - 1] = { ...this.history[epoch - 1], ...data };
      for (let i = 0; i < epoch; i += 1) this.history[i] = this.history[i] ?? {};
    }
    this.$training.set({ ...partial, data: this.historyData() });
  }

  /** Cancel the followed run (or the run `id`); the worker stops between steps. */
  async cancel(id = this.$run.get()?.id) {
    if (!id) return null;
    const run = await this.client.cancel(id);
    this.client.upsert(run);
    this.follow();
    return run;
  }

  /** Take the newest state of the followed run, and settle the runs that ended. */
  follow() {
    const current = this.$run.get();
    if (current) {
      const updated = this.client.get(current.id);
      if (updated && updated !== current) this.$run.set(updated);
    }
    for (const [id, { resolve, reject }] of this.waiting) {
      const run = this.client.get(id);
      if (!run || !TERMINAL.includes(run.status)) continue;
      this.waiting.delete(id);
      if (run.status === 'succeeded') resolve(run.result);
      else reject(this.report(new RunError(run)));
    }
  }

  show(run) {
    const status = run?.status ?? 'idle';
    const progress = run ? (status === 'succeeded' ? 1 : Number(run.progress) || 0) : 0;
    this.$status.set(status);
    this.$progress.set(progress);
    if (run?.partial !== undefined) this.$partial.set(run.partial ?? null);
    // A training run's partial is Marcelle's TrainingStatus (each new one once).
    const training = run?.params?.train && run.partial && typeof run.partial === 'object' && status === 'running';
    if (training && run.partial !== this.lastTraining) {
      const same = JSON.stringify(run.partial) === JSON.stringify(this.lastTraining);
      this.lastTraining = run.partial;
      if (!same) this.followTraining(run.partial);
    }
    if (status === 'succeeded') this.$result.set(run.result ?? null);
    const type = { succeeded: 'success', failed: 'danger', canceled: 'danger' }[status] ?? 'default';
    const worker = run?.worker ? ` (worker ${run.worker})` : '';
    const name = run ? `${run.model}: ` : '';
    this.$progressBar.set({ type, message: `${name}${STATUS_TEXT[status] ?? status}${worker}`, progress });
    this.cancelButton.$disabled.set(!run || !ACTIVE.includes(status));
    const { src, kind } = this.runImage();
    this.showImage(src, kind);
    this.renderRun();
  }

  /** The followed run's image to show: its result's, else its last intermediate one (or none). */
  runImage() {
    const result = imageURL(this.$run.get()?.result?.image);
    if (result) return { src: result, kind: 'result' };
    const partial = imageURL(this.$partial.get());
    return { src: partial, kind: partial ? 'partial' : null };
  }

  /** Decode the run's image (a data URL) for imageDisplay; a newer image wins over a late decode. */
  showImage(url, kind) {
    if (url === this.shownImage) return;
    this.shownImage = url;
    if (!url) {
      this.drawn = null;
      this.$image.set([]);
      return;
    }
    fromDataURL(url).then(
      (img) => {
        if (url !== this.shownImage) return;
        this.drawn = kind;
        this.$image.set(img);
        this.renderRun();
      },
      () => {}, // not an image this browser decodes: the view keeps the last one
    );
  }

  report(error) {
    this.$error.set(error.message);
    throwError(error);
    return error;
  }

  renderRun() {
    if (!this.nodes) return;
    const { status, progress, image, error } = this.nodes;
    status.dataset.status = this.$status.get();
    status.textContent = this.$progressBar.get().message;
    progress.dataset.progress = String(this.$progress.get());
    const { src, kind } = this.runImage();
    image.style.display = src ? '' : 'none';
    if (src) {
      image.dataset.src = src;
      image.dataset.kind = kind;
    } else {
      delete image.dataset.src;
      delete image.dataset.kind;
    }
    if (this.drawn) image.dataset.drawn = this.drawn;
    else delete image.dataset.drawn;
    error.textContent = this.$error.get() ?? '';
    error.style.display = this.$error.get() ? '' : 'none';
  }

  mount(target) {
    const t = target || document.querySelector(`#${this.id}`);
    if (!t) return;
    this.destroy();
    const make = (tag, testid, style = '') => {
      const node = document.createElement(tag);
      if (testid) node.dataset.testid = `${this.testid}-${testid}`;
      if (style) node.style.cssText = style;
      return node;
    };
    const progress = make('div', 'progress');
    const bar = make('div');
    bar.id = `${t.id}-${this.progress.id}`;
    progress.append(bar);
    const cancel = make('div', 'cancel');
    cancel.id = `${t.id}-${this.cancelButton.id}`;
    const image = make('div', 'image', 'width:128px;image-rendering:pixelated');
    const display = make('div');
    display.id = `${t.id}-${this.imageDisplay.id}`;
    image.append(display);
    this.nodes = {
      root: make('div'),
      status: make('p', 'status'),
      progress,
      image,
      error: make('p', 'error', 'color:#be123c;display:none'),
    };
    this.nodes.root.append(progress, this.nodes.status, image, cancel, this.nodes.error);
    t.append(this.nodes.root);
    this.progress.mount(bar);
    this.imageDisplay.mount(display);
    this.cancelButton.mount(cancel);
    this.renderRun();
    this.client.start().catch(() => {});
  }

  destroy() {
    this.progress.destroy();
    this.imageDisplay.destroy();
    this.cancelButton.destroy();
    this.nodes?.root.remove();
    this.nodes = null;
  }
}

export function backendRunModel(options) {
  return new BackendRunModel(options);
}
