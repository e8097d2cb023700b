/**
 * runClient — runs through the Marcelle backend (Solution 3), with Marcelle's own `dataStore`.
 *
 * A run is a document of the backend's `runs` service:
 * `{model, input, params, status, progress, partial, result, error, worker, createdAt, updatedAt}`
 * with status pending -> running -> succeeded | failed | canceled. The page creates it; a
 * Python worker (`marcelle-torch worker`) claims it and patches progress, intermediate images
 * (`partial`, a PNG data URL) and the result; the page sees every patch in real time.
 *
 * ```js
 * const client = runClient({ backendUrl: 'http://127.0.0.1:3030' });   // or { dataStore: store }
 * client.start();                                   // connects (and logs in if the backend asks)
 * const run = await client.create('digits-generator', { digit: 3 }, { steps: 200 });
 * client.$runs.subscribe((runs) => ...);            // newest first, kept up to date
 * await client.cancel(run.id);
 * ```
 *
 * Streams: `$status` 'idle' | 'connecting' | 'login' | 'logged-out' | 'ready' | 'error';
 * `$error` (message or null); `$runs` (the recent runs this user can see, newest first, each
 * with `id`); `$user` (the logged-in account's `{email, ...}`, or null when the backend has no
 * authentication or nobody is logged in); `$models` (what the connected workers serve, from
 * the backend's `served-models`: `[{name, task, channels, workers}]`, refreshed every
 * MODELS_REFRESH_MS while connected).
 * The connection opens on `start()` (the page calls it when first shown), not on import, so
 * an app without a backend shows no error until the runs page is used.
 *
 * Authentication: the page asks nothing of its configuration. Marcelle's dataStore learns
 * from the backend itself whether it requires authentication (@marcellejs/backend 0.6.5
 * lib/app.js emits `init` with `{auth}` on each Socket.IO connection; @marcellejs/core 0.6.5
 * sets `dataStore.requiresAuth` from it). Then a session kept from an earlier login (the JWT
 * in localStorage) is reused, or Marcelle's own login dialog opens ('login'). The backend
 * decides which runs an account sees (its own; all for the worker and admin accounts).
 */
import { Stream, dataStore } from '@marcellejs/core';
import './login-dialog.css';

export const ACTIVE = ['pending', 'running'];
// Workers come and go: how often the page asks which models they serve.
const MODELS_REFRESH_MS = 5000;

/** The backend answers `_id`; Marcelle's dataStore renames it `id` (events keep `_id`). */
export function normalizeRun(run) {
  const { _id, ...rest } = run;
  return { ...rest, id: run.id ?? _id };
}

export class RunClient {
  constructor({ backendUrl, dataStore: store = null, service = 'runs', historySize = 20 } = {}) {
    const location = backendUrl ?? store?.location;
    if (!location) {
      throw new Error('runClient: `backendUrl` (the Marcelle backend address) or a remote `dataStore` is required');
    }
    // Relative URLs ("/backend" behind the chart's nginx) resolve against the page.
    this.url = new URL(location, window.location.href).href.replace(/\/+$/, '');
    this.store = store;
    this.serviceName = service;
    this.historySize = historySize;
    this.$status = new Stream('idle', true);
    this.$error = new Stream(null, true);
    this.$runs = new Stream([], true);
    this.$user = new Stream(null, true);
    this.$models = new Stream([], true);
    this.ready = null;
    this.modelsTimer = null;
  }

  /** Connect once (idempotent); resolves when the history is loaded. */
  start() {
    if (!this.ready) {
      this.ready = this.connect().catch((error) => {
        this.ready = null; // a later start() tries again
        if (error instanceof LoginDismissed) {
          this.$status.set('logged-out');
          this.$error.set(null);
        } else {
          this.$status.set('error');
          this.$error.set(`cannot use the Marcelle backend at ${this.url}: ${error?.message ?? 'not reachable'}`);
        }
        throw error;
      });
      this.ready.catch(() => {});
    }
    return this.ready;
  }

  async connect() {
    this.$status.set('connecting');
    this.store = this.store ?? dataStore(this.url);
    this.runs = this.store.service(this.serviceName);
    if (!this.listening) {
      this.runs.on('created', (run) => this.upsert(run));
      this.runs.on('patched', (run) => this.upsert(run));
      this.runs.on('removed', (run) => this.drop(run));
      this.listening = true;
    }
    this.watchConnection();
    let user;
    try {
      user = await this.store.connect();
    } catch (error) {
      if (!this.store.requiresAuth) throw error ?? new Error('connection failed');
      // Authentication is on and there is no valid session: Marcelle's own login dialog. It
      // stays open until a login succeeds (a wrong password shows its error and lets the user
      // try again). It closes without a session only when its "Register" form fails, e.g.
      // with the backend's sign-up off (the admin account creates accounts).
      // @marcellejs/core 0.6.5: loginWithUI() resolves with the dialog's Svelte event in both
      // cases (DataStore.signup even answers `{email: null}` on failure); the store's own
      // `user`, set by DataStore.login, says whether someone logged in.
      this.$status.set('login');
      await this.store.loginWithUI().catch(() => {});
      user = this.store.user;
      if (!user?.email) throw new LoginDismissed();
    }
    this.$user.set(this.store.requiresAuth ? user : null);
    const page = await this.runs.find({ query: { $sort: { createdAt: -1 }, $limit: this.historySize } });
    this.$runs.set((page.data ?? page).map(normalizeRun));
    this.$status.set('ready');
    this.$error.set(null);
    this.refreshModels();
  }

  /** Ask the backend which models the connected workers serve; again every MODELS_REFRESH_MS. */
  async refreshModels() {
    clearTimeout(this.modelsTimer);
    try {
      const models = await this.store.feathers.service('served-models').find();
      const changed = JSON.stringify(models) !== JSON.stringify(this.$models.get());
      if (Array.isArray(models) && changed) this.$models.set(models);
    } catch (error) {
      console.warn(`runs: cannot list the served models: ${error?.message ?? error}`);
    } finally {
      this.modelsTimer = setTimeout(() => {
        if (this.$status.get() === 'ready') this.refreshModels();
      }, MODELS_REFRESH_MS);
    }
  }

  // A backend restart: say so while it is away, and reload the history when it is back (the
  // events sent meanwhile, e.g. a run that ended, never reached this page).
  watchConnection() {
    if (this.watching) return;
    this.watching = true;
    const socket = this.store.feathers.io;
    // @marcellejs/core 0.6.5 (DataStore) lets socket.io-client 2.5 give up after 5 attempts
    // (about 15 s), shorter than a backend restart may take: keep trying.
    socket.io.reconnectionAttempts(Infinity);
    socket.on('disconnect', () => {
      if (this.$status.get() === 'ready') this.$status.set('reconnecting');
    });
    socket.on('reconnect', () => {
      if (this.$status.get() === 'reconnecting') this.reload();
    });
  }

  async reload() {
    try {
      const page = await this.runs.find({ query: { $sort: { createdAt: -1 }, $limit: this.historySize } });
      for (const run of page.data ?? page) this.upsert(run);
      this.$status.set('ready');
      this.$error.set(null);
      this.refreshModels();
    } catch (error) {
      this.$status.set('error');
      this.$error.set(`cannot reload the runs from ${this.url}: ${error?.message ?? 'no answer'}`);
    }
  }

  upsert(raw) {
    const run = normalizeRun(raw);
    const runs = this.$runs.get().filter((r) => r.id !== run.id);
    const older = this.$runs.get().find((r) => r.id === run.id);
    // Events can arrive out of order; keep the newest state of each run.
    const keep = older && older.updatedAt && run.updatedAt && new Date(older.updatedAt) > new Date(run.updatedAt);
    runs.push(keep ? older : run);
    runs.sort((a, b) => new Date(b.createdAt) - new Date(a.createdAt));
    this.$runs.set(runs.slice(0, this.historySize));
  }

  drop(raw) {
    const { id } = normalizeRun(raw);
    this.$runs.set(this.$runs.get().filter((r) => r.id !== id));
  }

  get(id) {
    return this.$runs.get().find((r) => r.id === id) ?? null;
  }

  async create(model, input, params = {}) {
    await this.start();
    const run = normalizeRun(await this.runs.create({ model, input, params }));
    this.upsert(run);
    return run;
  }

  /** Cancel a pending or running run (the worker stops between steps). */
  async cancel(id) {
    await this.start();
    return normalizeRun(await this.runs.patch(id, { status: 'canceled' }));
  }

  /** Log out: Marcelle's dataStore.logout() forgets the session (JWT) and reloads the page. */
  async logout() {
    await this.store?.logout();
  }
}

/** Marcelle's login dialog closed without a logged-in user. */
export class LoginDismissed extends Error {
  constructor() {
    super('not logged in');
    this.name = 'LoginDismissed';
  }
}

export function runClient(options) {
  return new RunClient(options);
}
