import { defineConfig } from 'vite';

export default defineConfig({
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
