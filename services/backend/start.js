#!/usr/bin/env node
// Starts the Marcelle backend (@marcellejs/backend, unchanged) with this project's
// configuration and the few rules the `runs` service needs:
// - refuses to start with authentication on and no (or the example) JWT secret;
// - creates/updates the worker account (role `worker`) from MARCELLE_WORKER_EMAIL/_PASSWORD;
// - adds hooks to the `runs` service (validation of new runs, what a client may patch).
// The package's `marcelle-backend` bin only calls app.listen(); its Feathers `app` (the
// package's `lib/app` module) is the extension point used here: services and hooks are
// added with Feathers' own API, after the package's hooks. Config: backend/config/*.yaml.
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
  const services = config.get('whitelist.services');
  if (Array.isArray(services) && !services.includes('runs')) {
    fail('whitelist.services must include "runs"');
  }
}

let config;
try {
  config = require('config');
} catch (err) {
  fail(`cannot read the configuration in ${process.env.NODE_CONFIG_DIR}: ${err.message}`);
}
checkConfig(config);

const { BadRequest, MethodNotAllowed } = require('@feathersjs/errors');
const app = require('@marcellejs/backend/lib/app').default;
const logger = require('@marcellejs/backend/lib/logger').default;
const { runsHooks } = require('./runs-hooks');

async function ensureWorkerAccount() {
  const { workerEmail, workerPassword } = app.get('marcelleTorch') || {};
  if (!workerEmail && !workerPassword) {
    logger.warn('authentication is on and no worker account is configured (MARCELLE_WORKER_EMAIL/_PASSWORD)');
    return;
  }
  if (!workerEmail || !workerPassword) {
    fail('set both MARCELLE_WORKER_EMAIL and MARCELLE_WORKER_PASSWORD, or neither');
  }
  if (app.get('database') === 'mongodb') {
    await app.get('mongoClient');
  }
  const [local] = app.service('authentication').getStrategies('local');
  const password = await local.hashPassword(workerPassword, {});
  const users = app.service('users');
  // Underscore methods skip the service hooks, which force every account to `editor`.
  const found = await users._find({ query: { email: workerEmail }, paginate: false });
  if (found.length > 0) {
    await users._patch(found[0]._id, { password, role: 'worker' });
  } else {
    await users._create({ email: workerEmail, password, role: 'worker' });
  }
  logger.info('worker account %s is ready', workerEmail);
}

// Accounts are made through the API with the role `editor`; nobody may change a role there.
function protectRoles(context) {
  if (context.params.provider && context.data && 'role' in context.data) {
    throw new BadRequest('the role of an account cannot be changed through the API');
  }
  return context;
}

async function main() {
  const authEnabled = app.get('authentication').enabled;
  const host = app.get('host');
  const port = app.get('port');
  const server = app.listen(port, host);
  // listen() has run setup() synchronously: make the runs service now, before any request.
  app.service(':serviceName').getService('runs');
  app.service('runs').hooks(runsHooks({ authEnabled, errors: { BadRequest, MethodNotAllowed } }));
  if (authEnabled) {
    app.service('users').hooks({ before: { update: [protectRoles], patch: [protectRoles] } });
  }
  process.on('unhandledRejection', (reason) => logger.error('Unhandled Rejection: %s', reason));

  await new Promise((resolve, reject) => {
    server.once('listening', resolve);
    server.once('error', reject);
  }).catch((err) => fail(`cannot listen on ${host}:${port}: ${err.message}`));
  if (authEnabled) {
    await ensureWorkerAccount().catch((err) => fail(`cannot set up the worker account: ${err.message}`));
  }
  const address = server.address();
  const where = app.get('database') === 'nedb' ? `nedb files in ${app.get('nedb')}` : 'mongodb';
  // The launcher (marcelle_torch.stack.backend) waits for this line.
  console.log(`marcelle-backend listening on http://${host}:${address.port} (${where}, authentication ${authEnabled ? 'on' : 'off'})`);

  const stop = (signal) => {
    logger.info('%s: stopping', signal);
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main();
