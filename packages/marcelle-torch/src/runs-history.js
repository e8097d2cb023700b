/**
 * runsHistory — the recent runs of the Marcelle backend, newest first, kept up to date: a
 * Marcelle component over the `$runs` of a `backendRunModel` (or a `runClient`).
 *
 * ```js
 * dash.page('Runs').use(generator, runsHistory(generator));
 * runsHistory(client, { describe: (run) => `${run.model}: ${run.input.prompt}` });
 * ```
 *
 * Each run shows its time, `describe(run)` (default: the model's name), its status, its
 * progress while it runs and its result's `label` when it has one.
 * Hooks (`data-testid`): runs-history (the list), runs-history-item (data-status, data-id).
 */
import { Component } from '@marcellejs/core';

export const STATUS_TEXT = {
  pending: 'waiting for a worker',
  running: 'running',
  succeeded: 'done',
  failed: 'failed',
  canceled: 'canceled',
};

export function describeRun(run) {
  return String(run.model ?? 'run');
}

/** One line of the history (plain text). */
export function runLine(run, describe = describeRun) {
  const when = run.createdAt ? new Date(run.createdAt).toLocaleTimeString() : '';
  const label = run.result && typeof run.result.label !== 'undefined' ? ` → ${run.result.label}` : '';
  const outcome = run.status === 'succeeded' ? label : '';
  const progress = run.status === 'running' ? ` ${Math.round(100 * (run.progress || 0))}%` : '';
  return `${when} ${describe(run)}: ${STATUS_TEXT[run.status] ?? run.status}${progress}${outcome}`.trim();
}

export class RunsHistory extends Component {
  constructor(source, { title = 'your runs', describe = describeRun } = {}) {
    super();
    if (!source?.$runs) throw new Error('runsHistory: give it a backendRunModel or a runClient');
    this.title = title;
    this.source = source;
    this.client = source.client ?? source;
    this.describe = describe;
    source.$runs.subscribe((runs) => this.render(runs));
    this.start();
  }

  render(runs) {
    if (!this.list) return;
    this.list.replaceChildren(
      ...runs.map((run) => {
        const item = document.createElement('li');
        item.dataset.testid = 'runs-history-item';
        item.dataset.status = run.status;
        item.dataset.id = run.id;
        item.textContent = runLine(run, this.describe);
        return item;
      }),
    );
    this.empty.style.display = runs.length ? 'none' : '';
  }

  mount(target) {
    const t = target || document.querySelector(`#${this.id}`);
    if (!t) return;
    this.destroy();
    this.empty = document.createElement('p');
    this.empty.style.color = '#6b7280';
    this.empty.textContent = 'No runs yet.';
    this.list = document.createElement('ol');
    this.list.dataset.testid = 'runs-history';
    this.list.reversed = true;
    t.append(this.empty, this.list);
    this.render(this.source.$runs.get());
    this.client.start?.()?.catch?.(() => {});
  }

  destroy() {
    this.list?.remove();
    this.empty?.remove();
    this.list = null;
  }
}

export function runsHistory(source, options) {
  return new RunsHistory(source, options);
}
