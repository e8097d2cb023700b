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
//   and instances with them (accounts.js); per-user quotas on new runs and on the instances a
//   user keeps (quotas.js);
// - creates/updates the worker account (role `worker`) from MARCELLE_WORKER_EMAIL/_PASSWORD
//   and the app's admin account (role `admin`) from MARCELLE_ADMIN_EMAIL/_PASSWORD;
// - adds hooks to the `runs` service (validation of new runs, what a client may patch, and
//   a new run refused when no connected worker serves its model: workers.js), and sends the
//   worker's own progress patches to everyone but the worker (runs-hooks.js);
// - keeps the run queue: stamps leases with its own clock, puts runs of workers that stopped
//   renewing back to pending, fails runs nobody took in time (run-queue.js);
// - removes finished runs older than marcelleTorch.keepFinishedRunsSeconds (retention.js).
// The package's `marcelle-backend` bin only calls app.listen(); its Feathers `app` (the
// package's `lib/app` module) is the extension point used here: services and hooks are
// added with Feathers' own API, and the few changes to the package itself are in
// package-patches.js. Config: backend/config/*.yaml.
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
  const { perOwner } = config.get('marcelleTorch.instanceQuota') || {};
  if (!(Number.isInteger(perOwner) && perOwner > 0)) {
    fail(
      `marcelleTorch.instanceQuota.perOwner (MARCELLE_INSTANCES_PER_USER) must be a positive integer, got ${JSON.stringify(perOwner)}`,
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
const { runsHooks, patchedPublisher, MAX_INPUT_BYTES } = require('./runs-hooks');
const { runQuotas, instanceQuota, payloadTooLarge } = require('./quotas');
const { ensureAccounts, installAccountRules } = require('./accounts');
const { caslPermissions, SERVICES } = require('./policy');
const patches = require('./package-patches');
const { removeProtoAccessor } = require('./validation');
const { workerRegistry } = require('./workers');
const { startRunQueue, stampHeartbeat } = require('./run-queue');
const { startRunRetention } = require('./retention');

// A request or socket message may carry a run input up to the runs hook's limit, plus the
// rest of the run: the transports accept that much, so the hook is what refuses (with a
// message that says why) and no transport answers 500 or drops the connection first.
const MAX_MESSAGE_BYTES = MAX_INPUT_BYTES + 1024 * 1024;

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
  patches.rulesWithoutLog(abilities);

  // What the package's bin does with app.listen(port), but with the guard in front of the
  // whole Express app (@feathersjs/express 4.5 lib/index.js: listen = http server + setup).
  // setup() attaches Socket.IO, which takes its own /socket.io/ requests before this handler.
  const guard = restGuard(served, edge);
  patches.clientErrorsFromBodyParsers(app, { limit: MAX_MESSAGE_BYTES, payloadTooLarge });
  patches.corsForAllowedOrigins(app, (origin) => originAllowed(origin, corsOrigins));
  const server = http.createServer((req, res) => guard(req, res, () => app(req, res)));
  app.setup(server);
  socketGuard(app.io, served, edge);
  patches.socketMessageLimit(app.io, MAX_MESSAGE_BYTES);

  // setup() has run: make the data services now, before any request.
  patches.makeDataServices(app, services);
  const abilityFor = (user) => abilities.defineAbilitiesFor(user, app);
  // The policy runs first, before the package's own app hooks.
  patches.firstAppHook(app, accessPolicy({ authEnabled, allowSignup, dataServices: services, abilityFor }));
  app.hooks({ error: { all: [logDenials(logger)] } });
  const runs = app.service('runs');
  runs.hooks(runsHooks({ authEnabled, errors: { MethodNotAllowed }, payloadTooLarge }));
  runs.publish('patched', patchedPublisher(app, { authEnabled }));
  const workers = workerRegistry(app.io, { authEnabled, BadRequest });
  patches.serveAheadOfDynamicServices(app, 'served-models', { find: async () => workers.list() });
  const quota = runQuotas(quotas, runs);
  runs.hooks({
    before: { create: [workers.refuseUnservedModel, quota.before] },
    after: { create: [quota.release] },
    error: { create: [quota.release] },
  });
  // The data services whose records have an owner (`userId`, stamped by the package): runs, and
  // the instances of the datasets the policy names.
  const owned = services.filter(
    (name) => Object.prototype.hasOwnProperty.call(SERVICES, name) && SERVICES[name].owner === 'userId',
  );
  for (const name of owned.filter((n) => n !== 'runs')) {
    const instances = app.service(name);
    const held = instanceQuota(app.get('marcelleTorch').instanceQuota, instances, name);
    instances.hooks({
      before: { create: [held.before] },
      after: { create: [held.release] },
      error: { create: [held.release] },
    });
  }
  if (authEnabled) {
    await installAccountRules(
      app,
      owned.map((name) => app.service(name)),
    );
    const limits = loginLimits(app.get('marcelleTorch').loginLimits);
    app.service('authentication').hooks({
      before: { create: [limits.before] },
      after: { create: [limits.after] },
      error: { create: [deletedAccountIsNotAuthenticated] },
    });
    patches.usersQueriesWithAnd(app.service('users'));
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

main().catch((error) => {
  if (error instanceof patches.PackageChanged) fail(error.message);
  throw error;
});
