/**
 * What the project's Marcelle models share: a model made outside the page, trained in PyTorch,
 * that the page calls (Ray Serve: RayModel) or runs itself (an ONNX bundle: OnnxClassifier).
 * Marcelle's training and storage methods say why they do nothing here, and the small view is
 * the same: a status line, the last prediction, the last error, and a table of what the model
 * is. Hooks for tests: `<testid>`, `<testid>-status` (`data-status`), `<testid>-prediction`
 * (`data-label`), `<testid>-error`, `<testid>-info`.
 */
import { Model } from '@marcellejs/core';

const STATUS_COLOURS = { ready: '#0d9488', predicting: '#0284c7', connecting: '#6b7280', loading: '#6b7280' };
const ERROR_COLOUR = '#be123c';

export function escapeHtml(value) {
  return String(value).replace(
    /[&<>"']/g,
    (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c],
  );
}

export class ExternalModel extends Model {
  /**
   * @param {string} componentName the factory's name, as errors show it (e.g. 'rayModel')
   * @param {string} whereItLives why there is nothing to train or store in the browser
   */
  constructor(componentName, whereItLives) {
    super();
    this.componentName = componentName;
    this.whereItLives = whereItLives;
    this.parameters = {};
  }

  train() {
    throw new Error(`${this.componentName}: ${this.whereItLives}; it is not trained in the browser`);
  }

  async save() {
    this.#nothingTo('save');
  }

  async load() {
    this.#nothingTo('load');
  }

  async download() {
    this.#nothingTo('download');
  }

  async upload() {
    this.#nothingTo('upload');
  }

  #nothingTo(action) {
    throw new Error(`${this.componentName}: ${this.whereItLives}; there is nothing to ${action}`);
  }

  /** The streams whose changes re-render the view. */
  viewStreams() {
    return [this.$status, this.$error];
  }

  /** The view's HTML; subclasses call renderPanel with their own rows. */
  render() {
    return '';
  }

  renderPanel({
    testid,
    status,
    error,
    rows,
    attributes = '',
    besideStatus = '',
    belowStatus = '',
    prediction = null,
  }) {
    const colour = STATUS_COLOURS[status] ?? ERROR_COLOUR;
    const table = rows
      .map(([k, v]) => `<tr><td style="padding-right:1em;color:#6b7280">${k}</td><td>${escapeHtml(v)}</td></tr>`)
      .join('');
    return (
      `<div data-testid="${testid}"${attributes}>` +
      `<p>status: <strong data-testid="${testid}-status" data-status="${status}" style="color:${colour}">${status}</strong>` +
      `${besideStatus}</p>` +
      belowStatus +
      (prediction
        ? `<p>last prediction: <strong data-testid="${testid}-prediction" data-label="${escapeHtml(prediction.label)}">` +
          `${escapeHtml(prediction.label)}</strong></p>`
        : '') +
      (error
        ? `<p data-testid="${testid}-error" role="alert" style="color:${ERROR_COLOUR};margin:.5em 0">${escapeHtml(error)}</p>`
        : '') +
      `<table data-testid="${testid}-info" style="font-size:.85em">${table}</table></div>`
    );
  }

  mount(target) {
    const t = target || document.querySelector(`#${this.id}`);
    if (!t) return;
    this.destroy();
    this.view.title = this.title;
    this.view.mount(t);
    const update = () => this.view.$value.set(this.render());
    const unsubscribe = this.viewStreams().map((s) => s.subscribe(update));
    this.unmount = () => unsubscribe.forEach((u) => u());
  }

  destroy() {
    if (this.unmount) this.unmount();
    this.unmount = null;
    this.view.destroy();
  }
}

/** A model's line in a picker: its name, version and input, from its metadata. */
export function describeModel({ name, version, input }) {
  const what = input?.kind === 'image' ? `${input.size}×${input.size} ${input.channels === 3 ? 'RGB' : 'grey'}` : '';
  return [name, version !== undefined && version !== null ? `v${version}` : '', what].filter(Boolean).join(' · ');
}

/**
 * The classifier's predictions on every image of `$images`. A failed prediction is left out
 * (the classifier's own view shows the error), so the stream lives on for the next image.
 */
export function predictionsOf($images, classifier) {
  return $images
    .map((img) => classifier.predict(img).catch(() => null))
    .awaitPromises()
    .filter((prediction) => prediction !== null);
}
