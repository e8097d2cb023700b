// Flat config: the web app is browser ESM (Vite); vite.config.js runs in Node.
import js from '@eslint/js';
import prettier from 'eslint-config-prettier';
import globals from 'globals';

export default [
  { ignores: ['dist/', 'public/', 'node_modules/'] },
  js.configs.recommended,
  {
    files: ['src/**/*.js'],
    // __ONNX_BUNDLES__: defined by vite.config.js at build time.
    languageOptions: {
      ecmaVersion: 2022,
      sourceType: 'module',
      globals: { ...globals.browser, __ONNX_BUNDLES__: 'readonly' },
    },
  },
  {
    files: ['vite.config.js', 'eslint.config.js'],
    languageOptions: { ecmaVersion: 2022, sourceType: 'module', globals: globals.node },
  },
  // Formatting is prettier's: turn off the rules that would disagree with it.
  prettier,
];
