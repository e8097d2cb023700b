/**
 * runPanel — the web app's view of backend runs (Solution 3): the digits generator's digit and
 * steps, the classifier's image, and the run they start. The history is the package's
 * runsHistory, with this app's `describe`.
 *
 * ```js
 * const client = runClient({ backendUrl: config.backendUrl });
 * const panel = runPanel({ client, input });   // input: an imageInput
 * dash.page('Backend runs').sidebar(input).use(panel, runsHistory(client, { describe }));
 * ```
 *
 * runPanel offers the models the connected workers serve (`client.$models`): with a generation
 * model, pick a digit and a number of denoising steps and generate it; with a classifier, send
 * the image of `input` to it (the input follows the classifier's channels: drawing or RGB).
 * Then it follows the run: Marcelle's progressBar, the intermediate image, the status, a Cancel
 * button and the result. `generatorModel` and `classifierModel` are the models picked first
 * when served, and offered while no worker is connected (a run then waits for one).
 * Streams: `$run` (the followed run, or null), `$progress` ({type, message, progress} for progressBar).
 *
 * With the backend's authentication on, the client opens Marcelle's login dialog; the panel
 * then says who is logged in, with a Log out button, or offers a Log in button when the
 * dialog was closed without logging in. With authentication off none of this is shown.
 *
 * Stable hooks for tests (`data-testid`): runs-connection, runs-account, runs-login,
 * runs-logout, runs-generator-model, runs-classifier-model (selects), runs-digit, runs-steps,
 * runs-generate, runs-classify, runs-cancel, runs-progress (data-progress), runs-status
 * (data-status), runs-partial, runs-result (data-label), runs-result-image, runs-error,
 * runs-history, runs-history-item (data-status, data-id).
 */
import { Component, Stream, progressBar } from '@marcellejs/core';
import { ACTIVE, STATUS_TEXT, toInstance } from 'marcelle-torch';

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === 'style') node.style.cssText = value;
    else if (key.startsWith('data-')) node.setAttribute(key, value);
    else node[key] = value;
  }
  node.append(...children);
  return node;
}

/** What a run of this app is: a digit to generate or an image to classify. */
export function describe(run) {
  if (run.model && run.input && typeof run.input.digit !== 'undefined') return `${run.model}: digit ${run.input.digit}`;
  return `${run.model}: image`;
}

/** `<option>`s for `select`, keeping its value when still offered (else `preferred`, else the first). */
function fillSelect(select, names, preferred) {
  const current = select.value;
  select.replaceChildren(...names.map((name) => el('option', { value: name }, name)));
  const keep = [current, preferred].find((name) => names.includes(name));
  if (keep) select.value = keep;
  return select.value;
}

export class RunPanel extends Component {
  constructor({ client, generatorModel = null, classifierModel = null, input = null, defaultSteps = 200 } = {}) {
    super();
    this.title = 'backend runs';
    this.client = client;
    this.generatorModel = generatorModel;
    this.classifierModel = classifierModel;
    this.input = input;
    this.defaultSteps = defaultSteps;
    this.$run = new Stream(null, true);
    this.$progress = new Stream({ type: 'idle', message: 'no run yet', progress: 0 }, true);
    this.progress = progressBar(this.$progress);
    this.progress.title = 'progress';
    this.lastImage = null;
    if (input)
      input.$images.subscribe((img) => {
        this.lastImage = img;
      });
    // Follow the current run through the client's live list of runs.
    client.$runs.subscribe(() => {
      const current = this.$run.get();
      if (current) {
        const updated = client.get(current.id);
        if (updated && updated !== current) this.$run.set(updated);
      }
    });
    this.$run.subscribe((run) => this.render(run));
    client.$status.subscribe(() => this.renderConnection());
    client.$error.subscribe(() => this.renderConnection());
    client.$user.subscribe(() => this.renderConnection());
    client.$models.subscribe(() => this.renderModels());
    this.start();
  }

  async submit(model, input, params) {
    this.showError(null);
    try {
      const run = await this.client.create(model, input, params);
      this.$run.set(run);
    } catch (error) {
      this.showError(`cannot create the run: ${error.message}`);
    }
  }

  generate() {
    const digit = Number(this.nodes.digit.value);
    const steps = Number(this.nodes.steps.value);
    if (!Number.isInteger(steps) || steps < 1 || steps > 1000) {
      this.showError('steps must be a whole number from 1 to 1000');
      return;
    }
    this.submit(this.nodes.generatorModel.value, { digit }, { steps });
  }

  classify() {
    if (!this.lastImage) {
      this.showError('draw, upload or capture an image first (left panel)');
      return;
    }
    // At the input's own size (the classifier's, when its worker said): nothing to resize again.
    this.submit(this.nodes.classifierModel.value, toInstance(this.lastImage, this.lastImage.width), {});
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
    if (!this.nodes) return;
    const n = this.nodes;
    const { generation, classification } = this.modelChoices();
    fillSelect(n.generatorModel, generation, this.generatorModel);
    const classifier = fillSelect(n.classifierModel, classification, this.classifierModel);
    n.generateRow.style.display = generation.length ? 'flex' : 'none';
    n.classifyRow.style.display = classification.length ? 'flex' : 'none';
    n.noModels.style.display = generation.length || classification.length ? 'none' : '';
    this.followClassifier(classifier);
  }

  /** The input offers what the chosen classifier takes (its channels and size, as its worker said). */
  followClassifier(name) {
    const model = this.client.$models.get().find((m) => m.name === name);
    if (this.input && model?.channels) {
      this.input.follow({ kind: 'image', channels: model.channels, size: model.size ?? this.input.size });
    }
  }

  async cancel() {
    const run = this.$run.get();
    if (!run) return;
    try {
      this.$run.set(await this.client.cancel(run.id));
    } catch (error) {
      this.showError(`cannot cancel: ${error.message}`);
    }
  }

  showError(message) {
    if (!this.nodes) return;
    this.nodes.error.textContent = message ?? '';
    this.nodes.error.style.display = message ? '' : 'none';
  }

  renderConnection() {
    if (!this.nodes) return;
    const status = this.client.$status.get();
    const error = this.client.$error.get();
    const text =
      {
        idle: '',
        connecting: `connecting to the Marcelle backend at ${this.client.url}…`,
        login: 'log in to use the backend',
        'logged-out': 'log in to use the backend',
        ready: `connected to ${this.client.url}`,
        reconnecting: `lost the connection to the Marcelle backend at ${this.client.url}; reconnecting…`,
      }[status] ??
      error ??
      status;
    this.nodes.connection.textContent = status === 'error' ? error : text;
    this.nodes.connection.dataset.status = status;
    const usable = status === 'ready';
    this.nodes.generate.disabled = !usable;
    this.nodes.classify.disabled = !usable;
    const user = this.client.$user.get();
    const loggedOut = status === 'logged-out';
    this.nodes.account.style.display = user || loggedOut ? 'flex' : 'none';
    this.nodes.accountText.textContent = user ? `Logged in as ${user.email}` : '';
    this.nodes.logout.style.display = user ? '' : 'none';
    this.nodes.login.style.display = loggedOut ? '' : 'none';
  }

  render(run) {
    const progress = run ? Number(run.progress) || 0 : 0;
    if (run) {
      const type = { succeeded: 'success', failed: 'danger', canceled: 'danger' }[run.status] ?? 'default';
      this.$progress.set({ type, message: `${describe(run)}: ${STATUS_TEXT[run.status] ?? run.status}`, progress });
    }
    if (!this.nodes) return;
    const n = this.nodes;
    n.progressBox.dataset.progress = String(progress);
    n.status.dataset.status = run?.status ?? '';
    n.status.textContent = run
      ? `${describe(run)} — ${STATUS_TEXT[run.status] ?? run.status}` + (run.worker ? ` (worker ${run.worker})` : '')
      : 'No run yet.';
    n.cancel.disabled = !run || !ACTIVE.includes(run.status);
    const image = run?.result?.image ?? null;
    n.partial.style.display = run?.partial && !image ? '' : 'none';
    if (run?.partial) n.partial.src = run.partial;
    if (run?.status === 'succeeded' && run.result) {
      n.result.dataset.label = String(run.result.label);
      n.resultLabel.textContent = String(run.result.label);
      n.resultImage.style.display = image ? '' : 'none';
      if (image) n.resultImage.src = image;
      n.result.style.display = '';
    } else {
      n.result.style.display = 'none';
      delete n.result.dataset.label;
    }
    this.showError(run?.status === 'failed' ? run.error : null);
  }

  mount(target) {
    const t = target || document.querySelector(`#${this.id}`);
    if (!t) return;
    this.destroy();
    const digit = el(
      'select',
      { 'data-testid': 'runs-digit' },
      ...Array.from({ length: 10 }, (_, i) => el('option', { value: String(i) }, String(i))),
    );
    digit.value = '3';
    const steps = el('input', {
      type: 'number',
      min: 1,
      max: 1000,
      value: String(this.defaultSteps),
      'data-testid': 'runs-steps',
      style: 'width:6em',
    });
    const generate = el('button', { className: 'btn', 'data-testid': 'runs-generate', disabled: true }, 'Generate');
    const classify = el(
      'button',
      { className: 'btn', 'data-testid': 'runs-classify', disabled: true },
      'Classify the image',
    );
    const generatorModel = el('select', { 'data-testid': 'runs-generator-model' });
    const classifierModel = el('select', { 'data-testid': 'runs-classifier-model' });
    classifierModel.addEventListener('change', () => this.followClassifier(classifierModel.value));
    const cancel = el('button', { className: 'btn danger', 'data-testid': 'runs-cancel', disabled: true }, 'Cancel');
    const login = el('button', { className: 'btn', 'data-testid': 'runs-login' }, 'Log in');
    const logout = el('button', { className: 'btn danger', 'data-testid': 'runs-logout' }, 'Log out');
    login.addEventListener('click', () => this.client.start());
    logout.addEventListener('click', () => this.client.logout());
    const accountText = el('span');
    const account = el(
      'div',
      { 'data-testid': 'runs-account', style: 'display:none;gap:0.75rem;align-items:center;margin-bottom:0.5rem' },
      accountText,
      login,
      logout,
    );
    generate.addEventListener('click', () => this.generate());
    classify.addEventListener('click', () => this.classify());
    cancel.addEventListener('click', () => this.cancel());

    const progressBox = el('div', { 'data-testid': 'runs-progress', 'data-progress': '0' });
    const progressTarget = el('div', { id: `${t.id}-${this.progress.id}` });
    progressBox.append(progressTarget);
    const pixel = 'image-rendering:pixelated;border:1px solid #ccc;width:128px;height:128px';
    const partial = el('img', {
      'data-testid': 'runs-partial',
      alt: 'intermediate image',
      style: `${pixel};display:none`,
    });
    const resultLabel = el('code', { style: 'font-size:2rem' });
    const resultImage = el('img', { 'data-testid': 'runs-result-image', alt: 'result', style: pixel });
    const result = el(
      'div',
      { 'data-testid': 'runs-result', style: 'display:none' },
      el('p', {}, 'Result: ', resultLabel),
      resultImage,
    );

    const row = 'display:flex;gap:0.75rem;align-items:center;flex-wrap:wrap;margin-bottom:0.5rem';
    const generateRow = el(
      'div',
      { style: row },
      el('label', {}, 'Generator ', generatorModel),
      el('label', {}, 'Digit ', digit),
      el('label', {}, 'Denoising steps ', steps),
      generate,
    );
    const classifyRow = el('div', { style: row }, el('label', {}, 'Classifier ', classifierModel), classify);
    const noModels = el(
      'p',
      { 'data-testid': 'runs-no-models', style: 'color:#6b7280' },
      'No worker serves a model yet: start one with `marcelle-torch worker`.',
    );
    const controls = el('div', {}, generateRow, classifyRow, noModels, cancel);
    this.nodes = {
      connection: el('p', { 'data-testid': 'runs-connection', style: 'color:#6b7280' }),
      account,
      accountText,
      login,
      logout,
      digit,
      steps,
      generate,
      classify,
      generatorModel,
      classifierModel,
      generateRow,
      classifyRow,
      noModels,
      cancel,
      progressBox,
      partial,
      result,
      resultLabel,
      resultImage,
      status: el('p', { 'data-testid': 'runs-status' }),
      error: el('p', { 'data-testid': 'runs-error', style: 'color:#b91c1c;display:none' }),
    };
    t.append(
      this.nodes.connection,
      account,
      controls,
      progressBox,
      this.nodes.status,
      el('div', { style: 'display:flex;gap:1rem;align-items:flex-start' }, partial, result),
      this.nodes.error,
    );
    this.progress.mount(progressTarget);
    this.renderConnection();
    this.renderModels();
    this.render(this.$run.get());
    this.client.start();
  }

  destroy() {
    this.progress.destroy();
    if (this.nodes) {
      const root = this.nodes.connection.parentNode;
      if (root) root.replaceChildren();
    }
    this.nodes = null;
  }
}

export function runPanel(options) {
  return new RunPanel(options);
}
