// Compiled by `tsc` (npm run build): the declarations say what the README's snippet uses.
import { backendRunModel, imageInput, onnxClassifier, rayModel, runsHistory, toInstance } from 'marcelle-torch';
import type { ClassifierResults } from '@marcellejs/core';

const input = imageInput();
const ray = rayModel({ url: 'http://127.0.0.1:8000', model: 'digits' });
const onnx = onnxClassifier({ bundle: 'onnx/digits/' });
const generator = backendRunModel<{ label: number; image: string }>({ url: 'http://127.0.0.1:3030' });
input.$images.subscribe(async (img) => {
  const a: ClassifierResults = await ray.predict(img);
  const b: ClassifierResults = await onnx.predict(img);
  const c: { b64: string } = toInstance(img);
  const run = await generator.predict({ digit: 3 }, { steps: 10 });
  console.log(a.label, b.label, c.b64, run.label, generator.$progress.get() + 1);
});
runsHistory(generator);
