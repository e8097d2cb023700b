/**
 * Run-time configuration of the app, read from `/config.json` so that one build runs against
 * any Ray Serve / Marcelle backend (the local launcher and the Kubernetes chart write it).
 *
 * Every key is optional; a missing file or key falls back to the local defaults below.
 * URLs may be relative (e.g. "/serve" behind the chart's nginx): they resolve against the page.
 */

export const DEFAULT_CONFIG = Object.freeze({
  serveUrl: 'http://127.0.0.1:8000',
  backendUrl: 'http://127.0.0.1:3030',
  // The models each page picks first, when served (null: the first one listed).
  model: null,
  generatorModel: null,
  onnxBundle: null,
  // ONNX bundles served beside those built into the app, e.g. ["onnx/shapes/"].
  onnxBundles: [],
});

/** Fetch `config.json` next to the app and merge it over the defaults (never throws). */
export async function loadConfig(url = `${import.meta.env.BASE_URL}config.json`) {
  try {
    const response = await fetch(url, { cache: 'no-store' });
    if (!response.ok) {
      if (response.status !== 404) {
        console.warn(`config: ${url} answered HTTP ${response.status}; using the defaults`);
      }
      return { ...DEFAULT_CONFIG };
    }
    const loaded = await response.json();
    if (!loaded || typeof loaded !== 'object' || Array.isArray(loaded)) {
      console.warn(`config: ${url} is not a JSON object; using the defaults`);
      return { ...DEFAULT_CONFIG };
    }
    return { ...DEFAULT_CONFIG, ...loaded };
  } catch (error) {
    console.warn(`config: cannot read ${url} (${error.message}); using the defaults`);
    return { ...DEFAULT_CONFIG };
  }
}
