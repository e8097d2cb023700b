/**
 * teachPanel — the web app's Teach loop, made of Marcelle's widgets and the package's models:
 * draw an example, label it and add it to a Marcelle `dataset` kept in the backend; train the
 * model on it (a training run through `backendRunModel.train(dataset)`, followed by Marcelle's
 * `trainingProgress` and `trainingPlot`); publish a version (or roll back), which moves Ray
 * Serve, the workers and the app's ONNX bundle to it; and see which version of the model Ray
 * Serve answers the drawing with.
 *
 * ```js
 * const input = imageInput();
 * const panel = teachPanel({ client: runClient({ backendUrl }), serve: rayModel({ url, model }), input, model });
 * dash.page('Teach').sidebar(input).use(panel);
 * ```
 *
 * Nothing connects to the backend before the page is first shown: the dataset (and its
 * datasetBrowser) is made once the client is connected (and logged in, when the backend asks).
 * The versions listed are the results of the user's succeeded training runs of the model; the
 * published one is the newest publish run's (or, before any, the one Serve answers with).
 * "Roll back" publishes the version published before it (null: the model's own weights).
 *
 * Stable hooks (`data-testid`), each around one Marcelle widget or view: teach-connection
 * (data-status), teach-label, teach-add, teach-count (data-count), teach-dataset, teach-epochs,
 * teach-train, teach-progress, teach-plot, teach-training (data-status, data-version),
 * teach-versions (rows: teach-version with data-version, data-accuracy, data-published),
 * teach-version-select, teach-publish, teach-rollback, teach-published (data-status: idle |
 * publishing | done | failed, data-version: the published one, '' for the model's own), teach-serve
 * (the rayModel's view), teach-prediction (data-requested: the number of the newest image sent to
 * Serve) around teach-serve-label (data-label, data-confidence, data-version: the version that
 * answered, data-for: the number of the image it answers, data-count), teach-confidences; the run's view: teach-run-status, teach-run-progress, teach-run-cancel, ...
 */
import {
  Component,
  Stream,
  button,
  confidencePlot,
  dataset,
  datasetBrowser,
  number,
  select,
  text,
  textInput,
  throwError,
  trainingPlot,
  trainingProgress,
} from '@marcellejs/core';
import { backendRunModel, escapeHtml, toDataURL } from 'marcelle-torch';
import { row, untitled } from './panel-dom.js';

const VERSION_RE = /^[0-9a-f]{12}$/;
const THUMBNAIL = 60;
// After a publish, the drawing is predicted again until Serve answers with the new version.
const SERVED_TRIES = 20;
const SERVED_WAIT_MS = 500;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** The versions made by the succeeded training runs of `model` among `runs` (newest first). */
export function versionsOf(runs, model) {
  return runs
    .filter((r) => r.model === model && r.params?.train && r.status === 'succeeded')
    .map((r) => r.result)
    .filter((result) => result && VERSION_RE.test(result.version ?? ''));
}

/** The newest succeeded publish run of `model` among `runs`: its result {version, previous}, or null. */
export function lastPublish(runs, model) {
  const run = runs.find((r) => r.model === model && r.params && 'publish' in r.params && r.status === 'succeeded');
  return run?.result ?? null;
}

function percent(value) {
  return typeof value === 'number' ? `${(100 * value).toFixed(1)}%` : '–';
}

export class TeachPanel extends Component {
  constructor({ client, serve, input, model, datasetName = 'teach', epochs = 15 } = {}) {
    super();
    this.title = 'teach';
    this.client = client;
    this.serve = serve;
    this.input = input;
    this.model = model;
    this.datasetName = datasetName;
    this.teacher = backendRunModel({ client, model, testid: 'teach-run', title: '' });
    this.teacher.$training.set({ status: 'idle' }); // nothing trained from here yet
    this.dataset = null; // made once the backend is connected
    this.browser = null;
    this.lastImage = null;
    this.known = new Map(); // version -> training result, kept when the runs list moves on
    this.published = null; // the newest publish run's result
    this.publishing = { status: 'idle', version: null };
    this.training = { status: 'idle', version: null };
    this.predictionCount = 0;
    this.requested = 0; // the newest image sent to Serve: an older answer is not shown
    this.$predictions = new Stream(Stream.never(), false);

    this.widgets = {
      connection: untitled(text('')),
      label: untitled(textInput('')),
      add: untitled(button('Add example')),
      count: untitled(text('')),
      epochs: untitled(number(epochs)),
      train: untitled(button('Train')),
      progress: untitled(trainingProgress(this.teacher)),
      plot: untitled(trainingPlot(this.teacher, { loss: ['loss', 'lossVal'], accuracy: ['accuracy', 'accuracyVal'] })),
      training: untitled(text('')),
      versions: untitled(text('')),
      'version-select': untitled(select([])),
      publish: untitled(button('Publish')),
      rollback: untitled(button('Roll back')),
      published: untitled(text('')),
      prediction: untitled(text('Draw on the left: Ray Serve predicts it with the published version.')),
      confidences: untitled(confidencePlot(this.$predictions)),
    };
    const w = this.widgets;
    w.rollback.$type.set('danger');
    w.add.$click.subscribe(() => this.addExample());
    w.train.$click.subscribe(() => this.train());
    w.publish.$click.subscribe(() => this.publish(w['version-select'].$value.get() || null));
    w.rollback.$click.subscribe(() => this.rollback());
    input.$images.subscribe((img) => {
      this.lastImage = img;
      this.predict(img);
    });
    serve.$metadata.subscribe((metadata) => metadata && input.follow(metadata.input));
    serve.$version.subscribe(() => this.renderVersions());
    client.$status.subscribe(() => this.renderConnection());
    client.$error.subscribe(() => this.renderConnection());
    client.$runs.subscribe((runs) => this.followRuns(runs));
    this.teacher.$training.subscribe(() => this.renderTraining());
    this.start();
  }

  /** Connect (once, when first shown), then make the dataset in the connected store. */
  async connect() {
    await this.client.start();
    if (this.dataset) return;
    this.dataset = dataset(this.datasetName, this.client.store);
    this.browser = datasetBrowser(this.dataset);
    this.browser.title = `examples (dataset ${this.datasetName})`;
    this.dataset.$count.subscribe(() => this.renderCount());
    this.mountBrowser();
  }

  async addExample() {
    const label = String(this.widgets.label.$value.get() ?? '').trim();
    if (!label) return throwError(new Error('give the example a label first'));
    if (!this.lastImage) return throwError(new Error('draw an example first (left panel)'));
    if (!this.dataset) return throwError(new Error('not connected to the Marcelle backend yet'));
    const img = this.lastImage;
    try {
      // PNG (Marcelle's own hook would store an ImageData as JPEG): the worker trains on the
      // very pixels the page sends for a prediction.
      await this.dataset.create({ x: toDataURL(img, img.width), y: label, thumbnail: toDataURL(img, THUMBNAIL) });
    } catch (error) {
      throwError(new Error(`cannot add the example: ${error.message}`));
    }
    return undefined;
  }

  async train() {
    if (!this.dataset) return throwError(new Error('not connected to the Marcelle backend yet'));
    const epochs = Number(this.widgets.epochs.$value.get());
    this.training = { status: 'training', version: null };
    this.renderTraining();
    try {
      const result = await this.teacher.train(this.dataset, Number.isInteger(epochs) && epochs > 0 ? { epochs } : {});
      this.remember(result);
      this.training = { status: 'done', version: result.version };
      this.widgets['version-select'].$value.set(result.version);
    } catch {
      this.training = { status: 'failed', version: null }; // backendRunModel showed why
    }
    this.renderTraining();
    this.renderVersions();
    return undefined;
  }

  async publish(version) {
    const before = this.publishedVersion();
    this.publishing = { status: 'publishing', version };
    this.renderPublished();
    try {
      const result = await this.teacher.publish(version);
      this.published = result;
      this.publishing = { status: 'done', version: result.version ?? null };
      this.renderVersions();
      this.renderPublished();
      await this.untilServed(result.version ?? null, before);
    } catch {
      this.publishing = { status: 'failed', version };
      this.renderPublished();
    }
  }

  rollback() {
    if (!this.published) return throwError(new Error('nothing was published from here to roll back'));
    return this.publish(this.published.previous ?? null);
  }

  /** Predict the drawing again until Serve answers with `version` (null: not with `before`). */
  async untilServed(version, before) {
    for (let i = 0; i < SERVED_TRIES && this.lastImage; i += 1) {
      const answered = await this.predict(this.lastImage);
      if (answered && (version ? answered === version : answered !== before)) return;
      await sleep(SERVED_WAIT_MS);
    }
  }

  /** Serve's prediction of `img`, shown unless a newer image was sent meanwhile; its version. */
  async predict(img) {
    this.requested += 1;
    const mine = this.requested;
    if (this.nodes) this.nodes.prediction.dataset.requested = String(mine);
    let prediction;
    try {
      prediction = await this.serve.predict(img);
    } catch {
      return null; // the rayModel's view shows the error
    }
    if (mine !== this.requested) return prediction.modelVersion ?? null;
    this.predictionCount += 1;
    const { label, confidences, modelVersion = null } = prediction;
    const p = confidences[label];
    const safe = escapeHtml(label);
    const version = escapeHtml(modelVersion ?? '');
    this.widgets.prediction.$value.set(
      `<p>Ray Serve: <code data-testid="teach-serve-label" data-label="${safe}" data-confidence="${p}" ` +
        `data-version="${version}" data-for="${mine}" data-count="${this.predictionCount}" ` +
        `style="font-size:2rem">${safe}</code> ` +
        `<span style="color:#6b7280">(${percent(p)}, version <code>${version || '?'}</code>)</span></p>`,
    );
    this.$predictions.set(prediction);
    return modelVersion;
  }

  remember(result) {
    if (result && VERSION_RE.test(result.version ?? '') && !this.known.has(result.version)) {
      this.known.set(result.version, result);
      return true;
    }
    return false;
  }

  followRuns(runs) {
    let changed = false;
    for (const result of versionsOf(runs, this.model).reverse()) changed = this.remember(result) || changed;
    const published = lastPublish(runs, this.model);
    if (published && JSON.stringify(published) !== JSON.stringify(this.published)) {
      this.published = published;
      changed = true;
    }
    if (changed) this.renderVersions();
  }

  /** The published version as far as this page knows (null: the model's own weights). */
  publishedVersion() {
    if (this.published) return this.published.version ?? null;
    const served = this.serve.$version.get();
    return VERSION_RE.test(served ?? '') ? served : null;
  }

  renderConnection() {
    const status = this.client.$status.get();
    const message = {
      idle: '',
      connecting: `connecting to the Marcelle backend at ${this.client.url}…`,
      login: 'log in to teach the model',
      'logged-out': 'log in to teach the model',
      ready: `connected to ${this.client.url}`,
      reconnecting: `lost the connection to the Marcelle backend at ${this.client.url}; reconnecting…`,
    }[status];
    this.widgets.connection.$value.set(escapeHtml(message ?? this.client.$error.get() ?? status));
    for (const name of ['add', 'train', 'publish', 'rollback']) this.widgets[name].$disabled.set(status !== 'ready');
    if (this.nodes) this.nodes.connection.dataset.status = status;
  }

  renderCount() {
    const count = this.dataset?.$count.get() ?? 0;
    this.widgets.count.$value.set(`${count} example${count === 1 ? '' : 's'} in the dataset`);
    if (this.nodes) this.nodes.count.dataset.count = String(count);
  }

  renderTraining() {
    const { status, version } = this.training;
    const epoch = this.teacher.$training.get();
    const text = {
      idle: 'Add examples, then train: the model learns them in a worker (a training run).',
      training: `training… ${epoch?.epoch ? `epoch ${epoch.epoch} of ${epoch.epochs}` : ''}`,
      done: `trained: version <code>${escapeHtml(version ?? '')}</code>`,
      failed: 'the training failed (see the run above)',
    }[status];
    this.widgets.training.$value.set(text);
    if (!this.nodes) return;
    this.nodes.training.dataset.status = status;
    this.nodes.training.dataset.version = version ?? '';
  }

  renderVersions() {
    const published = this.publishedVersion();
    const versions = [...this.known.values()].reverse(); // newest first
    const rows = versions
      .map(({ version, metrics, labels }) => {
        const mark = version === published;
        const accuracy = metrics?.accuracy;
        return (
          `<tr data-testid="teach-version" data-version="${version}" data-accuracy="${accuracy ?? ''}" ` +
          `data-published="${mark}"${mark ? ' style="font-weight:bold"' : ''}>` +
          `<td><code>${version}</code></td><td>${percent(accuracy)}</td>` +
          `<td>${escapeHtml((labels ?? []).join(' '))}</td><td>${mark ? 'published' : ''}</td></tr>`
        );
      })
      .join('');
    this.widgets.versions.$value.set(
      versions.length
        ? `<table style="font-size:.9em"><tr style="color:#6b7280"><td>version</td><td>held-out accuracy</td>` +
            `<td>labels</td><td></td></tr>${rows}</table>` +
            (published ? '' : '<p style="color:#6b7280">published: the model\'s own weights</p>')
        : '<p style="color:#6b7280">No version yet: train the model.</p>',
    );
    const choices = versions.map((v) => v.version);
    const select = this.widgets['version-select'];
    const keep = choices.includes(select.$value.get()) ? select.$value.get() : choices[0];
    select.$options.set(choices);
    if (keep !== undefined) select.$value.set(keep);
  }

  renderPublished() {
    const { status, version } = this.publishing;
    const what = version ? `version <code>${escapeHtml(version)}</code>` : "the model's own weights";
    const text = {
      idle: '',
      publishing: `publishing ${what}…`,
      done: `published ${what}: Ray Serve, the workers and the ONNX bundle answer with it`,
      failed: `publishing ${what} failed (see the run above)`,
    }[status];
    this.widgets.published.$value.set(text);
    if (!this.nodes) return;
    this.nodes.published.dataset.status = status;
    this.nodes.published.dataset.version = version ?? '';
  }

  mountBrowser() {
    if (!this.nodes || !this.browser) return;
    this.browser.mount(this.nodes.dataset);
    this.renderCount();
  }

  mount(target) {
    const t = target || document.querySelector(`#${this.id}`);
    if (!t) return;
    this.destroy();
    const words = (value, tag = 'span') => {
      const node = document.createElement(tag);
      node.textContent = value;
      if (tag === 'h3') node.style.cssText = 'margin:1.25rem 0 .25rem;font-weight:600';
      return node;
    };
    const hook = (name, id) => {
      const div = document.createElement('div');
      div.id = `${t.id}-${id}`;
      div.dataset.testid = `teach-${name}`;
      return div;
    };
    const n = {};
    for (const [name, widget] of Object.entries(this.widgets)) n[name] = hook(name, widget.id);
    n.dataset = hook('dataset', 'dataset');
    n.serve = hook('serve', this.serve.id);
    n.run = hook('run', this.teacher.id);
    n.root = document.createElement('div');
    n.root.append(
      n.connection,
      words('1. Examples', 'h3'),
      row(words('Label'), n.label, n.add, n.count),
      n.dataset,
      words('2. Train', 'h3'),
      row(words('Epochs'), n.epochs, n.train),
      n.run,
      n.progress,
      n.training,
      n.plot,
      words('3. Versions', 'h3'),
      n.versions,
      row(n['version-select'], n.publish, n.rollback),
      n.published,
      words('Ray Serve', 'h3'),
      n.prediction,
      n.confidences,
      n.serve,
    );
    t.append(n.root);
    this.nodes = n;
    for (const [name, widget] of Object.entries(this.widgets)) widget.mount(n[name]);
    this.teacher.mount(n.run);
    this.serve.mount(n.serve);
    this.mountBrowser();
    this.renderConnection();
    this.renderTraining();
    this.renderVersions();
    this.renderPublished();
    this.connect().catch(() => {}); // the connection line says why
  }

  destroy() {
    // Once per mount: a mounted confidencePlot's destroy() cannot run twice (Marcelle 0.6.5), and
    // the dashboard destroys the page's components before the next mount() does.
    if (!this.nodes) return;
    for (const widget of Object.values(this.widgets)) widget.destroy();
    this.teacher.destroy();
    this.serve.destroy();
    this.browser?.destroy();
    this.nodes?.root.remove();
    this.nodes = null;
  }
}

export function teachPanel(options) {
  return new TeachPanel(options);
}
