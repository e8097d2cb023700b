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

// Teaching: a Marcelle dataset trains a new version; publishing it moves every path to it.
import { dataStore, dataset } from '@marcellejs/core';
const store = dataStore('http://127.0.0.1:3030');
const teacher = backendRunModel({ dataStore: store, model: 'digits' });
teacher.train(dataset('teach', store), { epochs: 5 }).then(async ({ version }) => {
  const published = await teacher.publish(version);
  const back: string | null = published.previous;
  await teacher.publish(back);
  const answeredBy: string | null = ray.$version.get();
  const loaded: boolean = await onnx.reload();
  console.log(answeredBy, loaded, (await ray.predict([[0]])).modelVersion);
});
