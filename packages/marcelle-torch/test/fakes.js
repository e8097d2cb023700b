// A stand-in for RunClient: the runs live in memory, patched by the test as a worker would.
import { Stream } from '@marcellejs/core';

export class FakeRunClient {
  constructor(models = [{ name: 'gen', task: 'generation' }]) {
    this.url = 'http://backend.test';
    this.$status = new Stream('ready', true);
    this.$runs = new Stream([], true);
    this.$models = new Stream(models, true);
    this.created = [];
    this.count = 0;
  }
  async start() {}
  get(id) {
    return this.$runs.get().find((r) => r.id === id) ?? null;
  }
  upsert(run) {
    this.$runs.set([run, ...this.$runs.get().filter((r) => r.id !== run.id)]);
  }
  async create(model, input, params) {
    this.count += 1;
    const run = { id: `r${this.count}`, model, input, params, status: 'pending', progress: 0, createdAt: new Date() };
    this.created.push(run);
    this.upsert(run);
    return run;
  }
  /** What the worker does: patch the run. */
  patch(id, changes) {
    this.upsert({ ...this.get(id), ...changes });
  }
  async cancel(id) {
    return { ...this.get(id), status: 'canceled' };
  }
}
