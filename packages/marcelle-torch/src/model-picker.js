/**
 * modelPicker — which of the served models a page uses: a `<select>` filled from a stream of
 * choices, as a Marcelle component.
 *
 * ```js
 * const picker = modelPicker({ testid: 'serve-model-picker' });
 * classifier.$models.subscribe((models) => picker.setChoices(models.map((m) => ({ value: m.name }))));
 * picker.$value.subscribe((name) => name && classifier.setModel(name));
 * ```
 *
 * Choices are `{value, label?, disabled?}`; `$value` is the chosen value (null until there is
 * one). Hook:
 * `data-testid` (default `model-picker`) on the `<select>`, its options' `value`s.
 */
import { Component, Stream } from '@marcellejs/core';

export class ModelPicker extends Component {
  constructor({ title = 'model', testid = 'model-picker', empty = 'no model yet' } = {}) {
    super();
    this.title = title;
    this.testid = testid;
    this.empty = empty;
    this.choices = [];
    this.$value = new Stream(null, true);
    this.start();
  }

  /**
   * Offer `choices`. The value stays when still offered; else it becomes `preferred`, or the
   * first choice when none is preferred. A preferred value that is not offered (a model the
   * configuration names but the server lacks) stays chosen, shown as unavailable, so the
   * page says why it cannot predict instead of quietly using another model.
   */
  setChoices(choices, preferred = null) {
    const offered = (value) => choices.some((c) => c.value === value && !c.disabled);
    const current = this.$value.get();
    let next = current;
    if (!offered(current)) next = preferred ?? choices.find((c) => !c.disabled)?.value ?? null;
    this.choices =
      next === null || offered(next)
        ? choices
        : [...choices, { value: next, label: `${next} (not available)`, disabled: true }];
    if (next !== current) this.$value.set(next);
    this.render();
  }

  /** Choose `value` as a user would (ignored when it is not offered). */
  choose(value) {
    if (value !== this.$value.get() && this.choices.some((c) => c.value === value)) this.$value.set(value);
    this.render();
  }

  render() {
    if (!this.select) return;
    const options = this.choices.map((c) => {
      const option = document.createElement('option');
      option.value = c.value;
      option.textContent = c.label ?? c.value;
      option.disabled = Boolean(c.disabled);
      return option;
    });
    if (options.length === 0) {
      const none = document.createElement('option');
      none.textContent = this.empty;
      none.value = '';
      options.push(none);
    }
    this.select.replaceChildren(...options);
    this.select.disabled = this.choices.length === 0;
    this.select.value = this.$value.get() ?? '';
  }

  mount(target) {
    const t = target || document.querySelector(`#${this.id}`);
    if (!t) return;
    this.destroy();
    this.select = document.createElement('select');
    this.select.dataset.testid = this.testid;
    this.select.style.cssText = 'width:100%;padding:0.25rem';
    this.select.addEventListener('change', () => this.choose(this.select.value));
    t.appendChild(this.select);
    this.render();
  }

  destroy() {
    this.select?.remove();
    this.select = null;
  }
}

export function modelPicker(options) {
  return new ModelPicker(options);
}
