import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    environment: 'happy-dom',
    include: ['test/**/*.test.js'],
    // @marcellejs/core is bundled ESM with CSS and Svelte inside: let vite transform it.
    server: { deps: { inline: ['@marcellejs/core'] } },
  },
});
