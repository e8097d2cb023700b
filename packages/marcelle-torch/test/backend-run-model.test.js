import { describe, expect, it, vi } from 'vitest';
import { backendRunModel, RunError } from '../src/index.js';
import { Stream } from '@marcellejs/core';
import { FakeRunClient } from './fakes.js';

vi.mock('@marcellejs/core', async (importOriginal) => ({ ...(await importOriginal()), throwError: vi.fn() }));

const tick = () => new Promise((resolve) => setTimeout(resolve, 0));

describe('backendRunModel', () => {
  it('resolves predict() with the run result, following status, progress and partial', async () => {
    const client = new FakeRunClient();
    const model = backendRunModel({ client, model: 'gen' });
    const progress = [];
    model.$progress.subscribe((p) => progress.push(p));
    const promise = model.predict({ digit: 3 }, { steps: 4 });
    await tick();
    expect(client.created[0]).toMatchObject({ model: 'gen', input: { digit: 3 }, params: { steps: 4 } });
    expect(model.$status.get()).toBe('pending');
    client.patch('r1', { status: 'running', progress: 0.5, partial: 'data:image/png;base64,AAAA' });
    expect(model.$status.get()).toBe('running');
    expect(model.$progress.get()).toBe(0.5);
    expect(model.$partial.get()).toBe('data:image/png;base64,AAAA');
    client.patch('r1', { status: 'succeeded', progress: 1, result: { label: 3, image: 'data:x' } });
    await expect(promise).resolves.toEqual({ label: 3, image: 'data:x' });
    expect(model.$status.get()).toBe('succeeded');
    expect(model.$result.get()).toEqual({ label: 3, image: 'data:x' });
    expect(progress).toContain(0.5);
    expect(progress.at(-1)).toBe(1);
  });

  it('rejects with a RunError when the run fails, and says why', async () => {
    const client = new FakeRunClient();
    const model = backendRunModel({ client, model: 'gen' });
    const promise = model.predict({});
    await tick();
    client.patch('r1', { status: 'failed', error: 'out of memory' });
    await expect(promise).rejects.toBeInstanceOf(RunError);
    expect(model.$error.get()).toMatch(/out of memory/);
  });

  it('cancel() cancels the followed run and predict() rejects', async () => {
    const client = new FakeRunClient();
    const model = backendRunModel({ client, model: 'gen' });
    const promise = model.predict({});
    await tick();
    client.patch('r1', { status: 'running', progress: 0.2 });
    await model.cancel();
    await expect(promise).rejects.toThrow(/canceled/);
    expect(model.$status.get()).toBe('canceled');
  });

  it('uses the first served model when none is given', async () => {
    const client = new FakeRunClient([{ name: 'first', task: 'generation' }]);
    const model = backendRunModel({ client });
    expect(model.model).toBe('first');
    model.setModel('other');
    model.predict({}).catch(() => {});
    await tick();
    expect(client.created[0].model).toBe('other');
  });

  it('tells an image (sent as a PNG instance) from a JSON input (sent as is)', async () => {
    const { isImage } = await import('../src/image-tensor.js');
    expect(isImage(document.createElement('canvas'))).toBe(true);
    expect(isImage({ digit: 3 })).toBe(false);
  });

  it('has a view: progress, status, the run image (partial, then result) and a Cancel button', async () => {
    const client = new FakeRunClient();
    const model = backendRunModel({ client, model: 'gen' });
    const target = document.createElement('div');
    target.id = 'view';
    document.body.append(target);
    model.mount(target);
    model.predict({}).catch(() => {});
    await tick();
    client.patch('r1', { status: 'running', progress: 0.25, partial: 'data:image/png;base64,AAAA' });
    expect(target.querySelector('[data-testid="run-status"]').dataset.status).toBe('running');
    expect(target.querySelector('[data-testid="run-progress"]').dataset.progress).toBe('0.25');
    const image = target.querySelector('[data-testid="run-image"]');
    expect(image.dataset.src).toBe('data:image/png;base64,AAAA');
    expect(image.dataset.kind).toBe('partial');
    expect(image.querySelector('canvas')).not.toBeNull(); // Marcelle's imageDisplay
    client.patch('r1', { status: 'succeeded', progress: 1, result: { image: 'data:image/png;base64,BBBB' } });
    expect(image.dataset.src).toBe('data:image/png;base64,BBBB');
    expect(image.dataset.kind).toBe('result');
    model.predict({}).catch(() => {});
    await tick();
    client.patch('r2', { status: 'running', progress: 0.5, partial: { status: 'epoch', epoch: 1, epochs: 4 } });
    expect(model.$partial.get()).toEqual({ status: 'epoch', epoch: 1, epochs: 4 });
    expect(image.dataset.src).toBeUndefined(); // a partial that is no image is not shown as one
    model.destroy();
    expect(target.querySelector('[data-testid="run-status"]')).toBeNull();
  });

  it('trains: a training run of Marcelle instances, $training following its TrainingStatus', async () => {
    const client = new FakeRunClient([{ name: 'shapes', task: 'classification' }]);
    const model = backendRunModel({ client, model: 'shapes' });
    const statuses = [];
    model.$training.subscribe((s) => statuses.push(s.status));
    const trained = model.train([{ x: { b64: 'AAAA' }, y: 'star' }], { epochs: 3 });
    await tick();
    const [run] = client.created;
    expect(run.input).toEqual({ examples: [{ x: { b64: 'AAAA' }, y: 'star' }] });
    expect(run.params).toEqual({ train: { epochs: 3 } });
    client.patch(run.id, { status: 'running', progress: 0.3, partial: { status: 'epoch', epoch: 1, epochs: 3 } });
    expect(model.$training.get()).toEqual({ status: 'epoch', epoch: 1, epochs: 3, data: {} });
    const version = { model: 'shapes', version: 'abc', metrics: { accuracy: 1 } };
    client.patch(run.id, { status: 'succeeded', progress: 1, result: version });
    await expect(trained).resolves.toEqual(version);
    expect(model.$training.get()).toMatchObject({ status: 'success' });
    expect(statuses).toEqual(expect.arrayContaining(['start', 'epoch', 'success']));
    await expect(model.train([])).rejects.toThrow('give a Marcelle dataset');
  });

  it('trains on a Marcelle dataset by its name: the worker reads its instances from the backend', async () => {
    const client = new FakeRunClient([{ name: 'digits', task: 'classification' }]);
    const model = backendRunModel({ client, model: 'digits' });
    const teach = { isDataset: true, name: 'teach', ready: Promise.resolve(), $count: new Stream(10, true) };
    const trained = model.train(teach, { epochs: 2 });
    await tick();
    const [run] = client.created;
    expect(run.input).toEqual({ dataset: 'teach' });
    expect(run.params).toEqual({ train: { epochs: 2 } });
    client.patch(run.id, { status: 'succeeded', progress: 1, result: { version: '0123456789ab' } });
    await expect(trained).resolves.toEqual({ version: '0123456789ab' });
    const empty = { ...teach, $count: new Stream(0, true) };
    await expect(model.train(empty)).rejects.toThrow('the dataset teach is empty');
    expect(client.created).toHaveLength(1);
  });

  it("gives trainingPlot one value per epoch, whichever of the worker's updates arrive", async () => {
    const client = new FakeRunClient([{ name: 'digits', task: 'classification' }]);
    const model = backendRunModel({ client, model: 'digits' });
    const trained = model.train([{ x: { b64: 'AAAA' }, y: 'x' }], { epochs: 3 });
    await tick();
    const running = (partial) => client.patch('r1', { status: 'running', partial });
    running({ status: 'start', epoch: 0, epochs: 3 });
    running({ status: 'epoch', epoch: 1, epochs: 3, batch: 1, batches: 2, data: { loss: 2, accuracy: 0.1 } });
    running({
      status: 'epoch',
      epoch: 1,
      epochs: 3,
      data: { loss: 1.5, accuracy: 0.4, lossVal: 1.6, accuracyVal: 0.3 },
    });
    // Epoch 2's end was dropped by the worker's rate limit: its last batch stands for it.
    running({ status: 'epoch', epoch: 2, epochs: 3, batch: 2, batches: 2, data: { loss: 1, accuracy: 0.6 } });
    running({ status: 'epoch', epoch: 3, epochs: 3, batch: 1, batches: 2, data: { loss: 0.5, accuracy: 0.9 } });
    expect(model.$training.get()).toEqual({
      status: 'epoch',
      epoch: 3,
      epochs: 3,
      batch: 1,
      batches: 2,
      data: { loss: [1.5, 1, 0.5], accuracy: [0.4, 0.6, 0.9], lossVal: [1.6], accuracyVal: [0.3] },
    });
    client.patch('r1', { status: 'succeeded', progress: 1, result: { version: '0123456789ab' } });
    await trained;
    expect(model.$training.get()).toMatchObject({ status: 'success', epoch: 3, epochs: 3 });
    expect(model.$training.get().data.loss).toEqual([1.5, 1, 0.5]);
  });

  it("publishes a version (or the model's own weights) with a publish run, rejecting with its error", async () => {
    const client = new FakeRunClient([{ name: 'digits', task: 'classification' }]);
    const model = backendRunModel({ client, model: 'digits' });
    const published = model.publish('0123456789ab');
    await tick();
    expect(client.created[0]).toMatchObject({ model: 'digits', input: null, params: { publish: '0123456789ab' } });
    const result = { model: 'digits', version: '0123456789ab', previous: null };
    client.patch('r1', { status: 'succeeded', progress: 1, result });
    await expect(published).resolves.toEqual(result);
    const back = model.publish(null);
    await tick();
    expect(client.created[1].params).toEqual({ publish: null });
    client.patch('r2', { status: 'failed', error: 'only an admin may publish' });
    await expect(back).rejects.toThrow('only an admin may publish');
    await expect(model.publish('v2')).rejects.toThrow('12 hex characters');
    expect(client.created).toHaveLength(2);
  });
});
