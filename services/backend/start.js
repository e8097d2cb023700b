#!/usr/bin/env node
// Starts the Marcelle backend (@marcellejs/backend, unchanged) with this project's
// configuration and the rules it needs:
// - refuses to start with authentication on and no (or the example) JWT secret, or with a
//   whitelist.services that is not a list of safe names;
// - removes the `__proto__` accessor once every module is loaded (defence in depth against
//   prototype pollution: validation.js);
// - serves only the names the app uses, to the allowed Host names and origins, checks every
//   call's shape, answers who may do what, throttles logins (access.js, validation.js: in
//   front of every REST request and Socket.IO packet, and the first app hook), as policy.js
//   says, which also gives the package its CASL `permissions`;
// - tokens end at logout and password change; accounts take their runs with them
//   (accounts.js); per-user quotas on new runs (quotas.js);
// - creates/updates the worker account (role `worker`) from MARCELLE_WORKER_EMAIL/_PASSWORD
//   and the app's admin account (role `admin`) from MARCELLE_ADMIN_EMAIL/_PASSWORD;
// - adds hooks to the `runs` service (validation of new runs, what a client may patch, and
//   a new run refused when no connected worker serves its model: workers.js);
// - keeps the run queue: stamps leases with its own clock, puts runs of workers that stopped
//   renewing back to pending, fails runs nobody took in time (run-queue.js);
// - removes finished runs older than marcelleTorch.keepFinishedRunsSeconds (retention.js).
// The package's `marcelle-backend` bin only calls app.listen(); its Feathers `app` (the
// package's `lib/app` module) is the extension point used here: services and hooks are
// added with Feathers' own API. Config: backend/config/*.yaml.
'use strict';

const path = require('path');

process.env.NODE_CONFIG_DIR = process.env.NODE_CONFIG_DIR || path.join(__dirname, 'backend', 'config');
// The package records every call in a debug database unless NODE_ENV is production.
process.env.NODE_ENV = process.env.NODE_ENV || 'production';

const EXAMPLE_SECRET = 'ZjXdk3pXZLVpvcEMGGuh6LYdi9o='; // shipped in the package's example config
const MIN_SECRET_LENGTH = 16;

function fail(message) {
  console.error(`marcelle-backend: error: ${message}`);
  process.exit(2);
}

function checkConfig(config) {
  const auth = config.get('authentication');
  if (auth.enabled === true) {
    if (!auth.secret) {
      fail('authentication is on but no JWT secret is set: set MARCELLE_BACKEND_SECRET');
    }
    if (auth.secret === EXAMPLE_SECRET) {
      fail("authentication.secret is the package's public example secret: set your own MARCELLE_BACKEND_SECRET");
    }
    if (auth.secret.length < MIN_SECRET_LENGTH) {
      fail(`MARCELLE_BACKEND_SECRET is too short: use at least ${MIN_SECRET_LENGTH} characters`);
    }
  } else if (auth.enabled !== false) {
    fail(`authentication.enabled must be true or false, got ${JSON.stringify(auth.enabled)}`);
  }
  const database = config.get('database');
  if (!['nedb', 'mongodb'].includes(database)) {
    fail(`database must be nedb or mongodb, got ${JSON.stringify(database)}`);
  }
  if (config.has('permissions')) {
    fail(
      'the configuration has `permissions`: who may do what is services/backend/policy.js, which gives the package its permissions; remove them from the configuration',
    );
  }
  const servicesProblem = checkServiceNames(config.get('whitelist.services'));
  if (servicesProblem) fail(servicesProblem);
  const assets = config.get('whitelist.assets');
  if (!Array.isArray(assets) || assets.length > 0) {
    // The package's /assets routes (lib/services/assets/assets.service.js) join URL parameters
    // into file paths; this app uploads no files.
    fail(`whitelist.assets must be [] (this backend serves no file uploads), got ${JSON.stringify(assets)}`);
  }
  const limits = config.get('marcelleTorch.loginLimits');
  for (const key of ['perClient', 'perAccount']) {
    const { attempts, seconds } = limits[key] || {};
    if (!(Number.isInteger(attempts) && attempts > 0 && Number.isInteger(seconds) && seconds > 0)) {
      fail(`marcelleTorch.loginLimits.${key} must be {attempts, seconds} (positive integers)`);
    }
  }
  const isWholeNumber = (value) => Number.isInteger(value) && value >= 0;
  const keep = config.get('marcelleTorch.keepFinishedRunsSeconds');
  if (!isWholeNumber(keep)) {
    fail(
      `marcelleTorch.keepFinishedRunsSeconds (MARCELLE_RUNS_KEEP_FINISHED_S) must be 0 (keep every run) or a number of seconds, got ${JSON.stringify(keep)}`,
    );
  }
  const { runsPerMinute, pendingInputBytes } = config.get('marcelleTorch.runQuotas') || {};
  if (!(Number.isInteger(runsPerMinute) && runsPerMinute > 0)) {
    fail(
      `marcelleTorch.runQuotas.runsPerMinute (MARCELLE_RUNS_PER_MINUTE) must be a positive integer, got ${JSON.stringify(runsPerMinute)}`,
    );
  }
  if (!(Number.isInteger(pendingInputBytes) && pendingInputBytes > 0)) {
    fail(
      `marcelleTorch.runQuotas.pendingInputBytes (MARCELLE_RUNS_PENDING_BYTES) must be a positive integer, got ${JSON.stringify(pendingInputBytes)}`,
    );
  }
  const queue = config.get('marcelleTorch.runQueue') || {};
  const positive = (value) => typeof value === 'number' && Number.isFinite(value) && value > 0;
  for (const [key, env] of [
    ['leaseSeconds', 'MARCELLE_RUNS_LEASE_S'],
    ['checkSeconds', 'MARCELLE_RUNS_CHECK_S'],
  ]) {
    if (!positive(queue[key])) {
      fail(
        `marcelleTorch.runQueue.${key} (${env}) must be a positive number of seconds, got ${JSON.stringify(queue[key])}`,
      );
    }
  }
  if (!(queue.pendingSeconds === 0 || positive(queue.pendingSeconds))) {
    fail(
      `marcelleTorch.runQueue.pendingSeconds (MARCELLE_RUNS_PENDING_TIMEOUT_S) must be 0 (never) or a number of seconds, got ${JSON.stringify(queue.pendingSeconds)}`,
    );
  }
  const origins = config.get('marcelleTorch.corsOrigins');
  if (!Array.isArray(origins) || !origins.every((o) => typeof o === 'string' && /^https?:\/\/[^/\s]+$/.test(o))) {
    fail(
      `marcelleTorch.corsOrigins (MARCELLE_BACKEND_CORS_ORIGINS) must be a list of origins such as "http://localhost:8080" (or "http://localhost:*", any port), got ${JSON.stringify(origins)}`,
    );
  }
  const hosts = config.get('marcelleTorch.allowedHosts');
  if (
    !Array.isArray(hosts) ||
    hosts.length === 0 ||
    !hosts.every((h) => typeof h === 'string' && /^(\*|[A-Za-z0-9.-]+|\[[0-9a-fA-F:]+\])$/.test(h))
  ) {
    fail(
      `marcelleTorch.allowedHosts (MARCELLE_BACKEND_ALLOWED_HOSTS) must be a list of host names (or ["*"]), got ${JSON.stringify(hosts)}`,
    );
  }
  const proxies = config.get('marcelleTorch.trustedProxies');
  if (!isWholeNumber(proxies)) {
    fail(
      `marcelleTorch.trustedProxies (MARCELLE_BACKEND_TRUSTED_PROXIES) must be 0, 1, 2, ..., got ${JSON.stringify(proxies)}`,
    );
  }
}

const {
  checkServiceNames,
  servedNames,
  restGuard,
  socketGuard,
  accessPolicy,
  logDenials,
  loginLimits,
  originAllowed,
} = require('./access');

let config;
try {
  config = require('config');
} catch (err) {
  fail(`cannot read the configuration in ${process.env.NODE_CONFIG_DIR}: ${err.message}`);
}
checkConfig(config);

const http = require('http');
const { BadRequest, MethodNotAllowed, NotAuthenticated } = require('@feathersjs/errors');
const app = require('@marcellejs/backend/lib/app').default;
const logger = require('@marcellejs/backend/lib/logger').default;
const abilities = require('@marcellejs/backend/lib/authentication/abilities');
const { runsHooks, MAX_INPUT_BYTES } = require('./runs-hooks');
const { runQuotas, payloadTooLarge } = require('./quotas');
const { ensureAccounts, installAccountRules } = require('./accounts');
const { caslPermissions } = require('./policy');
const cors = require('cors');
const { removeProtoAccessor } = require('./validation');
const { workerRegistry } = require('./workers');
const { startRunQueue, stampHeartbeat } = require('./run-queue');
const { startRunRetention } = require('./retention');
const feathersExpress = require('@feathersjs/express');

// A request or socket message may carry a run input up to the runs hook's limit, plus the
// rest of the run: the transports accept that much, so the hook is what refuses (with a
// message that says why) and no transport answers 500 or drops the connection first.
const MAX_MESSAGE_BYTES = MAX_INPUT_BYTES + 1024 * 1024;

// The package's body parsers (@marcellejs/backend 0.6.5 lib/app.js: express.json() and
// express.urlencoded(), 100 kB default) hand their errors (bad JSON, too large) to Feathers'
// error handler, which answers GeneralError 500. Replaced in place with parsers of the
// transports' limit whose errors are the client's: BadRequest 400 or PayloadTooLarge 413.
function clientErrorsFromBodyParsers(expressApp) {
  const parsers = {
    jsonParser: feathersExpress.json({ limit: MAX_MESSAGE_BYTES }),
    urlencodedParser: feathersExpress.urlencoded({ extended: true, limit: MAX_MESSAGE_BYTES }),
  };
  const replaced = expressApp._router.stack.filter((layer) => layer.name in parsers);
  if (replaced.length !== 2) fail('the backend package no longer has its json and urlencoded body parsers');
  for (const layer of replaced) {
    const parse = parsers[layer.name];
    layer.handle = (req, res, next) =>
      parse(req, res, (err) => {
        if (!err) return next();
        const tooLarge = err.type === 'entity.too.large';
        const error = tooLarge
          ? payloadTooLarge(`the request body is over ${MAX_MESSAGE_BYTES} bytes`)
          : new BadRequest(
              `the request body is not valid ${layer.name === 'jsonParser' ? 'JSON' : 'form data'}: ${err.message}`,
            );
        const answer = () => res.status(error.code).json(error.toJSON());
        if (!tooLarge || req.complete) return answer();
        // Refused on its Content-Length, unread: read the rest (up to a bound) before answering,
        // or the client, still sending, sees the connection reset instead of the 413.
        let unread = 4 * MAX_MESSAGE_BYTES;
        req.on('data', (chunk) => {
          unread -= chunk.length;
          if (unread < 0) req.destroy();
        });
        req.on('end', answer);
        req.resume();
      });
  }
}

// The package answers every origin (@marcellejs/backend 0.6.5 lib/app.js: `app.use(cors())`,
// Access-Control-Allow-Origin: *), so any website could read and write the local demo's runs.
// Replaced in place: only the configured origins (the web app's) get CORS answers.
function corsForAllowedOrigins(expressApp, origins) {
  const layers = expressApp._router.stack.filter((layer) => layer.name === 'corsMiddleware');
  if (layers.length !== 1) fail('the backend package no longer has its cors middleware');
  layers[0].handle = cors({ origin: (origin, done) => done(null, originAllowed(origin, origins)) });
}

// The `served-models` service (workers.js): find only. Its REST routes are moved ahead of the
// package's on-demand `/:serviceName` route and its 404 handler (@marcellejs/backend 0.6.5
// lib/app.js registers them when it loads; Express tries routes in order).
function serveServedModels(expressApp, workers) {
  expressApp.use('served-models', { find: async () => workers.list() });
  const stack = expressApp._router.stack;
  const routeOf = (layer) => (layer.route ? layer.route.path : '');
  const dynamic = stack.findIndex((layer) => routeOf(layer) === '/:serviceName');
  const mine = stack.filter((layer) => routeOf(layer).startsWith('/served-models'));
  if (dynamic < 0 || mine.length === 0) fail('the backend package no longer routes its services as expected');
  for (const layer of mine) stack.splice(stack.indexOf(layer), 1);
  stack.splice(dynamic, 0, ...mine);
}

// @marcellejs/backend 0.6.5 lib/authentication/abilities.js logs the whole permissions
// object (`console.log('permissions', ...)`) each time it computes a caller's rules (every
// REST call with a token, every login). It reads `exports.defineRulesFor` at call time, so
// this replacement (same rules: the role's list from `permissions`, which start.js derives
// from policy.js, with "${user.…}" placeholders filled in; no rules for an unknown role, or for an account not yet stored,
// whose `_id` is unknown) is used everywhere, without the log. Refused calls are logged by
// logDenials instead.
const UNDEFINED = Symbol('undefined placeholder');
function fillPlaceholders(value, user) {
  if (Array.isArray(value)) return value.map((v) => fillPlaceholders(v, user));
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, fillPlaceholders(v, user)]));
  }
  const match = typeof value === 'string' && /^\$\{user\.([A-Za-z_][A-Za-z0-9_]*)\}$/.exec(value);
  if (!match) return value;
  if (user[match[1]] === undefined) throw UNDEFINED;
  return user[match[1]];
}
abilities.defineRulesFor = (user, theApp) => {
  const permissions = theApp.get('permissions') || {};
  const rules = Object.prototype.hasOwnProperty.call(permissions, user.role) ? permissions[user.role] : [];
  try {
    return fillPlaceholders(rules, user);
  } catch (error) {
    if (error === UNDEFINED) return [];
    throw error;
  }
};

// A valid token (strategy jwt) of an account that no longer exists: the JWT strategy's
// users.get answers NotFound; the caller is not authenticated.
function deletedAccountIsNotAuthenticated(context) {
  if (context.error && context.error.code === 404) {
    context.error = new NotAuthenticated('The account of this token no longer exists');
  }
  return context;
}

async function main() {
  const authEnabled = app.get('authentication').enabled;
  const allowSignup = app.get('authentication').allowSignup === true;
  const host = app.get('host');
  const port = app.get('port');
  const { trustedProxies, corsOrigins, allowedHosts, runQuotas: quotas } = app.get('marcelleTorch');
  const services = app.get('whitelist').services;
  const served = servedNames(services, authEnabled);
  const edge = { trustedProxies, allowedHosts, corsOrigins };
  // The package's CASL rules (its hooks on data services and `users`, its real-time channels,
  // the `rules` of a login) are the policy's.
  app.set('permissions', caslPermissions());

  // What the package's bin does with app.listen(port), but with the guard in front of the
  // whole Express app (@feathersjs/express 4.5 lib/index.js: listen = http server + setup).
  // setup() attaches Socket.IO, which takes its own /socket.io/ requests before this handler.
  const guard = restGuard(served, edge);
  clientErrorsFromBodyParsers(app);
  corsForAllowedOrigins(app, corsOrigins);
  const server = http.createServer((req, res) => guard(req, res, () => app(req, res)));
  app.setup(server);
  socketGuard(app.io, served, edge);
  // engine.io 3.6 (lib/server.js) reads maxHttpBufferSize (1 MB by default) into its websocket
  // server when it is made: set it, then make that server again.
  app.io.eio.maxHttpBufferSize = MAX_MESSAGE_BYTES;
  app.io.eio.init();

  // setup() has run: make the data services now, before any request.
  for (const name of services) app.service(':serviceName').getService(name);
  const abilityFor = (user) => abilities.defineAbilitiesFor(user, app);
  // The policy runs first, before the package's own app hooks (registered when lib/app was
  // loaded): @feathersjs/commons 4.5 lib/hooks.js keeps each method's app before-hooks in
  // app.__hooks.before[method], run in order.
  const policy = accessPolicy({ authEnabled, allowSignup, dataServices: services, abilityFor });
  for (const method of ['find', 'get', 'create', 'update', 'patch', 'remove']) {
    const hooks = app.__hooks.before[method];
    if (!Array.isArray(hooks)) fail(`the backend package no longer keeps its ${method} app hooks where expected`);
    hooks.unshift(policy);
  }
  app.hooks({ error: { all: [logDenials(logger)] } });
  const runs = app.service('runs');
  runs.hooks(runsHooks({ authEnabled, errors: { MethodNotAllowed }, payloadTooLarge }));
  const workers = workerRegistry(app.io, { authEnabled, BadRequest });
  serveServedModels(app, workers);
  const quota = runQuotas(quotas, runs);
  runs.hooks({
    before: { create: [workers.refuseUnservedModel, quota.before] },
    after: { create: [quota.release] },
    error: { create: [quota.release] },
  });
  if (authEnabled) {
    await installAccountRules(app, runs);
    const limits = loginLimits(app.get('marcelleTorch').loginLimits);
    app.service('authentication').hooks({
      before: { create: [limits.before] },
      after: { create: [limits.after] },
      error: { create: [deletedAccountIsNotAuthenticated] },
    });
    // The package's CASL hook on users.find (adapter `feathers-mongodb`) turns a rule with
    // conditions into an `$and` query, which the users service's adapter refuses unless
    // whitelisted (@feathersjs/adapter-commons 4.5 reads options.whitelist on each call).
    const users = app.service('users');
    users.options.whitelist = [...new Set([...(users.options.whitelist || []), '$and'])];
  }
  runs.hooks({ before: { patch: [stampHeartbeat()] } });
  startRunQueue(runs, { ...app.get('marcelleTorch').runQueue, servedModels: () => workers.served().models, logger });
  const keepSeconds = app.get('marcelleTorch').keepFinishedRunsSeconds;
  if (keepSeconds > 0) startRunRetention(app.service('runs'), { keepSeconds, logger });
  process.on('unhandledRejection', (reason) => logger.error('Unhandled Rejection: %s', reason));

  // Every module is loaded and set up: from here on `__proto__` is an ordinary key.
  removeProtoAccessor();

  // The accounts exist before the first request is accepted.
  if (authEnabled) {
    await ensureAccounts(app, { fail, logger }).catch((err) =>
      fail(`cannot set up the worker and admin accounts: ${err.message}`),
    );
  }
  server.listen(port, host);
  await new Promise((resolve, reject) => {
    server.once('listening', resolve);
    server.once('error', reject);
  }).catch((err) => fail(`cannot listen on ${host}:${port}: ${err.message}`));
  const address = server.address();
  const where = app.get('database') === 'nedb' ? `nedb files in ${app.get('nedb')}` : 'mongodb';
  // The launcher (marcelle_torch.stack.backend) waits for this line.
  console.log(
    `marcelle-backend listening on http://${host}:${address.port} (${where}, authentication ${authEnabled ? 'on' : 'off'})`,
  );

  const stop = (signal) => {
    logger.info('%s: stopping', signal);
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main();
