/**
 * runPanel — the web app's view of backend runs (Solution 3), made of Marcelle's widgets and the
 * package's backendRunModel: pick a generation model, a digit and a number of denoising steps
 * and generate it, or send the image of `input` to a classifier; then follow the run (the
 * backendRunModel's view: progress bar, status, the run's image, Cancel) and its result.
 *
 * ```js
 * const client = runClient({ backendUrl: config.backendUrl });
 * const panel = runPanel({ client, input });   // input: an imageInput
 * dash.page('Backend runs').sidebar(input).use(panel, runsHistory(client, { describe }));
 * ```
 *
 * The models offered are those the connected workers serve (`client.$models`); `generatorModel`
 * and `classifierModel` are picked first when served, and offered while no worker is connected
 * (a run then waits for one). The input follows the chosen classifier's channels and size.
 *
 * With the backend's authentication on, the client opens Marcelle's login dialog; the panel
 * then says who is logged in, with a Log out button, or offers a Log in button when the dialog
 * was closed without logging in. With authentication off none of this is shown.
 *
 * Stable hooks (`data-testid`), each around one Marcelle widget: runs-connection (data-status),
 * runs-account, runs-login, runs-logout, runs-generator-model, runs-digit, runs-steps,
 * runs-generate, runs-classifier-model, runs-classify, runs-no-models, runs-result (data-label);
 * and the run's view: runs-progress, runs-status, runs-image, runs-cancel, runs-error.
 */
import { Component, button, number, select, text, throwError } from '@marcellejs/core';
import { backendRunModel, escapeHtml } from 'marcelle-torch';
import { row, untitled } from './panel-dom.js';

const DIGITS = Array.from({ length: 10 }, (_, i) => String(i));
const MAX_STEPS = 1000;

/** What a run of this app is: a digit to generate or an image to classify. */
export function describe(run) {
  if (run.model && run.input && typeof run.input.digit !== 'undefined') return `${run.model}: digit ${run.input.digit}`;
  return `${run.model}: image`;
}

/** Offer `names` in `widget`, keeping its value when still offered (else `preferred`, else the first). */
function offer(widget, names, preferred) {
  const keep = [widget.$value.get(), preferred].find((name) => names.includes(name)) ?? names[0];
  widget.$options.set(names);
  if (keep !== undefined) widget.$value.set(keep);
}

export class RunPanel extends Component {
  constructor({ client, generatorModel = null, classifierModel = null, input = null, defaultSteps = 200 } = {}) {
    super();
    this.title = 'backend runs';
    this.client = client;
    this.generatorModel = generatorModel;
    this.classifierModel = classifierModel;
    this.input = input;
    this.run = backendRunModel({ client, testid: 'runs', title: '' });
    this.lastImage = null;
    input?.$images.subscribe((img) => {
      this.lastImage = img;
    });

    this.widgets = {
      connection: untitled(text('')),
      account: untitled(text('')),
      login: untitled(button('Log in')),
      logout: untitled(button('Log out')),
      'generator-model': untitled(select([])),
      digit: untitled(select(DIGITS, '3')),
      steps: untitled(number(defaultSteps)),
      generate: untitled(button('Generate')),
      'classifier-model': untitled(select([])),
      classify: untitled(button('Classify the image')),
      'no-models': untitled(text('No worker serves a model yet: start one with <code>marcelle-torch worker</code>.')),
      result: untitled(text('')),
    };
    const w = this.widgets;
    w.logout.$type.set('danger');
    w.login.$click.subscribe(() => client.start());
    w.logout.$click.subscribe(() => client.logout());
    w.generate.$click.subscribe(() => this.generate());
    w.classify.$click.subscribe(() => this.classify());
    w['classifier-model'].$value.subscribe((name) => this.followClassifier(name));
    this.run.$status.subscribe(() => this.renderResult());
    this.run.$result.subscribe(() => this.renderResult());
    client.$status.subscribe(() => this.renderConnection());
    client.$error.subscribe(() => this.renderConnection());
    client.$user.subscribe(() => this.renderConnection());
    client.$models.subscribe(() => this.renderModels());
    this.start();
  }

  /** Start a run of `model`; its progress and outcome show in the run's view. */
  submit(model, input, params) {
    this.run.setModel(model);
    // A failed or canceled run is shown by the view and reported by backendRunModel.
    this.run.predict(input, params).catch(() => {});
  }

  generate() {
    const steps = Number(this.widgets.steps.$value.get());
    if (!Number.isInteger(steps) || steps < 1 || steps > MAX_STEPS) {
      throwError(new Error(`steps must be a whole number from 1 to ${MAX_STEPS}`));
      return;
    }
    const digit = Number(this.widgets.digit.$value.get());
    this.submit(this.widgets['generator-model'].$value.get(), { digit }, { steps });
  }

  classify() {
    if (!this.lastImage) {
      throwError(new Error('draw, upload or capture an image first (left panel)'));
      return;
    }
    // At the input's own size (the classifier's, when its worker said): nothing to resize again.
    this.submit(this.widgets['classifier-model'].$value.get(), this.lastImage, {});
  }

  /** The served models of each kind (the preferred ones while no worker is connected). */
  modelChoices() {
    const served = this.client.$models.get();
    const names = (task) => served.filter((m) => m.task === task).map((m) => m.name);
    if (served.length > 0) return { generation: names('generation'), classification: names('classification') };
    return {
      generation: this.generatorModel ? [this.generatorModel] : [],
      classification: this.classifierModel ? [this.classifierModel] : [],
    };
  }

  renderModels() {
    const { generation, classification } = this.modelChoices();
    offer(this.widgets['generator-model'], generation, this.generatorModel);
    offer(this.widgets['classifier-model'], classification, this.classifierModel);
    if (!this.nodes) return;
    this.nodes.generateRow.style.display = generation.length ? 'flex' : 'none';
    this.nodes.classifyRow.style.display = classification.length ? 'flex' : 'none';
    this.nodes['no-models'].style.display = generation.length || classification.length ? 'none' : '';
  }

  /** The input offers what the chosen classifier takes (its channels and size, as its worker said). */
  followClassifier(name) {
    const model = this.client.$models.get().find((m) => m.name === name);
    if (this.input && model?.channels) {
      this.input.follow({ kind: 'image', channels: model.channels, size: model.size ?? this.input.size });
    }
  }

  renderConnection() {
    const { client, widgets: w } = this;
    const status = client.$status.get();
    const message = {
      idle: '',
      connecting: `connecting to the Marcelle backend at ${client.url}…`,
      login: 'log in to use the backend',
      'logged-out': 'log in to use the backend',
      ready: `connected to ${client.url}`,
      reconnecting: `lost the connection to the Marcelle backend at ${client.url}; reconnecting…`,
    }[status];
    w.connection.$value.set(escapeHtml(message ?? client.$error.get() ?? status)); // Marcelle's text is HTML
    const usable = status === 'ready';
    w.generate.$disabled.set(!usable);
    w.classify.$disabled.set(!usable);
    const user = client.$user.get();
    w.account.$value.set(user ? `Logged in as ${escapeHtml(user.email)}` : '');
    if (!this.nodes) return;
    const n = this.nodes;
    n.connection.dataset.status = status;
    n.accountRow.style.display = user || status === 'logged-out' ? 'flex' : 'none';
    n.logout.style.display = user ? '' : 'none';
    n.login.style.display = status === 'logged-out' ? '' : 'none';
  }

  renderResult() {
    const result = this.run.$status.get() === 'succeeded' ? this.run.$result.get() : null;
    const label = result && typeof result.label !== 'undefined' ? String(result.label) : null;
    const shown = label === null ? '' : `Result: <code style="font-size:1.5rem">${escapeHtml(label)}</code>`;
    this.widgets.result.$value.set(shown);
    if (!this.nodes) return;
    this.nodes.result.style.display = label === null ? 'none' : '';
    if (label === null) delete this.nodes.result.dataset.label;
    else this.nodes.result.dataset.label = label;
  }

  mount(target) {
    const t = target || document.querySelector(`#${this.id}`);
    if (!t) return;
    this.destroy();
    const label = (words, node) => {
      const span = document.createElement('span');
      span.textContent = words;
      return row(span, node);
    };
    // Each widget mounts in a div of ours, with a stable hook (as Marcelle's confidencePlot does).
    const n = {};
    for (const [name, widget] of Object.entries(this.widgets)) {
      const div = document.createElement('div');
      div.id = `${t.id}-${widget.id}`;
      div.dataset.testid = `runs-${name}`;
      n[name] = div;
    }
    n.accountRow = row(n.account, n.login, n.logout);
    n.generateRow = row(
      label('Generator', n['generator-model']),
      label('Digit', n.digit),
      label('Denoising steps', n.steps),
      n.generate,
    );
    n.classifyRow = row(label('Classifier', n['classifier-model']), n.classify);
    const runView = document.createElement('div');
    runView.id = `${t.id}-${this.run.id}`;
    n.root = document.createElement('div');
    n.root.append(n.connection, n.accountRow, n.generateRow, n.classifyRow, n['no-models'], runView, n.result);
    t.append(n.root);
    this.nodes = n;
    for (const [name, widget] of Object.entries(this.widgets)) widget.mount(n[name]);
    this.run.mount(runView);
    this.renderConnection();
    this.renderModels();
    this.renderResult();
    this.client.start();
  }

  destroy() {
    for (const widget of Object.values(this.widgets)) widget.destroy();
    this.run.destroy();
    this.nodes?.root.remove();
    this.nodes = null;
  }
}

export function runPanel(options) {
  return new RunPanel(options);
}
