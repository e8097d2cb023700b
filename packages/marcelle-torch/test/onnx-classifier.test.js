import { afterEach, describe, expect, it, vi } from 'vitest';

// The runtime is not what is tested here: a session answers the bundle's own probabilities.
vi.mock('onnxruntime-web/wasm', () => {
  class Tensor {
    constructor(type, data, dims) {
      Object.assign(this, { type, data, dims });
    }
  }
  const InferenceSession = {
    create: vi.fn(async (bytes) => {
      const probabilities = JSON.parse(new TextDecoder().decode(bytes));
      return { run: async () => ({ probs: { data: Float32Array.from(probabilities) } }) };
    }),
  };
  return { Tensor, InferenceSession, env: { wasm: {}, versions: { web: 'test' } } };
});

const { onnxClassifier } = await import('../src/index.js');
const { InferenceSession } = await import('onnxruntime-web/wasm');

/** A bundle server: model.json says the version; the "model file" is the probabilities it answers. */
function bundleServer(state) {
  return vi.fn(async (url, init) => {
    expect(init).toMatchObject({ cache: 'no-cache' }); // the bundle may change at the same URL
    const { version, labels, probabilities } = state;
    if (String(url).endsWith('model.json')) {
      const onnx = { file: 'model.onnx', input_name: 'image', output_name: 'probs', opset: 18, bytes: 0 };
      return new Response(JSON.stringify({ name: 'digits', version, labels, input: { kind: 'image', size: 2 }, onnx }));
    }
    return new Response(JSON.stringify(probabilities));
  });
}

afterEach(() => {
  vi.unstubAllGlobals();
  vi.useRealTimers();
});

describe('onnxClassifier', () => {
  it('predicts with the version it loaded, and reloads the bundle only when its version changed', async () => {
    const state = { version: '1', labels: ['0', '1'], probabilities: [0.2, 0.8] };
    const fetch = bundleServer(state);
    vi.stubGlobal('fetch', fetch);
    const classifier = onnxClassifier({ bundle: 'onnx/digits/' });
    await classifier.loaded;
    expect(classifier.$version.get()).toBe('1');
    const input = new Float32Array(4);
    expect(await classifier.predict(input)).toMatchObject({ label: '1', modelVersion: '1' });
    expect(await classifier.reload()).toBe(false); // same version: nothing loaded again
    expect(InferenceSession.create).toHaveBeenCalledTimes(1);

    Object.assign(state, { version: '0123456789ab', labels: ['0', '1', 'star'], probabilities: [0.1, 0.1, 0.8] });
    // A prediction made while the new bundle loads waits for it, and is the new version's.
    let during = null;
    classifier.$status.subscribe((status) => {
      if (status === 'loading' && !during) during = classifier.predict(input);
    });
    const reloading = classifier.reload();
    expect(await reloading).toBe(true);
    expect(await during).toMatchObject({ label: 'star', modelVersion: '0123456789ab' });
    expect(classifier.$version.get()).toBe('0123456789ab');
    expect(classifier.$metadata.get().labels).toEqual(['0', '1', 'star']);
    expect(InferenceSession.create).toHaveBeenCalledTimes(2);
  });

  it('keeps its model when the check fails, and checks while shown with `refresh`', async () => {
    const state = { version: '1', labels: ['a', 'b'], probabilities: [0.9, 0.1] };
    const server = bundleServer(state);
    let away = false;
    vi.stubGlobal('fetch', (url, init) => (away ? Promise.reject(new Error('refused')) : server(url, init)));
    const classifier = onnxClassifier({ bundle: 'onnx/ab/', refresh: 1000 });
    await classifier.loaded;
    away = true;
    expect(await classifier.reload()).toBe(false);
    expect(classifier.$status.get()).toBe('ready');
    away = false;

    vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval', 'setTimeout', 'clearTimeout'] });
    const target = document.createElement('div');
    target.id = 'onnx-view';
    document.body.append(target);
    classifier.mount(target);
    state.version = '2';
    await vi.advanceTimersByTimeAsync(1000);
    await vi.waitFor(() => expect(classifier.$version.get()).toBe('2'));
    expect(target.querySelector('[data-testid="onnx-model"]').dataset.version).toBe('2');
    classifier.destroy();
    state.version = '3';
    await vi.advanceTimersByTimeAsync(5000);
    expect(classifier.$version.get()).toBe('2'); // not shown: not checked
  });
});
