import { afterEach, describe, expect, it, vi } from 'vitest';
import { rayModel } from '../src/index.js';

const DIGITS = { name: 'digits', version: '1', labels: ['0', '1'], input: { kind: 'image', size: 32, channels: 1 } };

function answer(body, status = 200) {
  return new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json' } });
}

afterEach(() => vi.unstubAllGlobals());

describe('rayModel', () => {
  it('reads the model list and metadata, then predicts through Serve', async () => {
    const fetch = vi.fn(async (url, init) => {
      if (String(url).endsWith('/v1/models')) return answer({ models: [DIGITS] });
      expect(String(url)).toBe('http://serve.test/v1/models/digits:predict');
      expect(JSON.parse(init.body)).toEqual({ instances: [[[0, 1]]] });
      return answer({ predictions: [{ label: '1', confidences: { 0: 0.1, 1: 0.9 } }] });
    });
    vi.stubGlobal('fetch', fetch);
    const model = rayModel({ url: 'http://serve.test/' });
    await vi.waitFor(() => expect(model.$ready.get()).toBe(true));
    expect(model.$model.get()).toBe('digits');
    expect(model.$metadata.get().labels).toEqual(['0', '1']);
    await expect(model.predict([[0, 1]])).resolves.toMatchObject({ label: '1' });
  });

  it("shows Serve's own error message", async () => {
    vi.stubGlobal(
      'fetch',
      vi.fn(async (url) => {
        if (String(url).endsWith('/v1/models')) return answer({ models: [DIGITS] });
        return answer({ error: { code: 'bad_input', message: 'the image is empty' } }, 400);
      }),
    );
    const model = rayModel({ url: 'http://serve.test', model: 'digits' });
    await vi.waitFor(() => expect(model.$ready.get()).toBe(true));
    await expect(model.predict([[0]])).rejects.toThrow(/the image is empty/);
    expect(model.$error.get()).toMatch(/the image is empty/);
  });

  it('says which version answered ($version, modelVersion), and reads the metadata again when it changes', async () => {
    let served = { ...DIGITS, version: '1' };
    const fetch = vi.fn(async (url) => {
      if (String(url).endsWith('/v1/models')) return answer({ models: [served] });
      const label = served.version === '1' ? '1' : 'star';
      return answer({ predictions: [{ label, confidences: { [label]: 1 } }], model_version: served.version });
    });
    vi.stubGlobal('fetch', fetch);
    const model = rayModel({ url: 'http://serve.test', model: 'digits' });
    await vi.waitFor(() => expect(model.$ready.get()).toBe(true));
    expect(model.$version.get()).toBe('1'); // the metadata's, before any prediction
    await expect(model.predict([[0]])).resolves.toEqual({ label: '1', confidences: { 1: 1 }, modelVersion: '1' });
    const listings = () => fetch.mock.calls.filter(([url]) => String(url).endsWith('/v1/models')).length;
    const before = listings();
    served = { ...DIGITS, version: '0123456789ab', labels: ['0', '1', 'star'] };
    const versions = [];
    model.$version.subscribe((v) => versions.push(v));
    const prediction = await model.predict([[0]]);
    expect(prediction).toMatchObject({ label: 'star', modelVersion: '0123456789ab' });
    expect(model.$version.get()).toBe('0123456789ab');
    await vi.waitFor(() => expect(model.$metadata.get()?.labels).toEqual(['0', '1', 'star']));
    expect(listings()).toBe(before + 1);
    expect(versions).toEqual(['1', '0123456789ab']);
  });

  it('leaves modelVersion out when Serve does not say it (ClassifierResults as before)', async () => {
    vi.stubGlobal(
      'fetch',
      vi.fn(async (url) => {
        if (String(url).endsWith('/v1/models')) return answer({ models: [DIGITS] });
        return answer({ predictions: [{ label: '0', confidences: { 0: 1 } }] });
      }),
    );
    const model = rayModel({ url: 'http://serve.test', model: 'digits' });
    await vi.waitFor(() => expect(model.$ready.get()).toBe(true));
    await expect(model.predict([[0]])).resolves.toEqual({ label: '0', confidences: { 0: 1 } });
  });
});
