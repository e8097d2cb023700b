import { existsSync, readdirSync } from 'node:fs';
import { defineConfig } from 'vite';

// The ONNX bundles built into the app (public/onnx/<name>/model.json, written by
// `marcelle-torch export-onnx`), listed for the ONNX page's picker: the app's code names none.
function builtInBundles(root = 'public/onnx') {
  if (!existsSync(root)) return [];
  return readdirSync(root, { withFileTypes: true })
    .filter((entry) => entry.isDirectory() && existsSync(`${root}/${entry.name}/model.json`))
    .map((entry) => `onnx/${entry.name}/`)
    .sort();
}

export default defineConfig({
  define: { __ONNX_BUNDLES__: JSON.stringify(builtInBundles()) },
  build: {
    target: 'es2022',
    // @marcellejs/core bundles TensorFlow.js and friends; one large vendor chunk is expected.
    chunkSizeWarningLimit: 8000,
  },
  optimizeDeps: {
    // onnxruntime-web loads its .wasm next to its own module; pre-bundling breaks that path.
    exclude: ['onnxruntime-web'],
  },
  server: { host: '127.0.0.1' },
});
