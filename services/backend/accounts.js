// Accounts and their tokens (authentication on; start.js wires these in):
// - the deployment's accounts (worker, admin) made or reset from the environment;
// - tokens carry the account's `tokenVersion` (claim `tv`, checked by access.js on every
//   call); logout, a password change and a reset from the environment raise it;
// - an unknown email costs one bcrypt comparison and answers as a wrong password does, so
//   logins tell nothing about which accounts exist;
// - deleting an account deletes its runs and its dataset instances.
'use strict';

const crypto = require('crypto');
const { NotAuthenticated } = require('@feathersjs/errors');
const { checkTokenVersion } = require('./access');

const nextTokenVersion = (account) => (account.tokenVersion || 0) + 1;

/** Creates or resets an account the deployment owns (password and role from the environment). */
async function ensureAccount(app, { role, email, password, names, fail, logger }) {
  if (!email && !password) return false;
  if (!email || !password) fail(`set both ${names[0]} and ${names[1]}, or neither`);
  if (app.get('database') === 'mongodb') {
    await app.get('mongoClient');
  }
  const [local] = app.service('authentication').getStrategies('local');
  const hashed = await local.hashPassword(password, {});
  const users = app.service('users');
  // Underscore methods skip the service hooks, which force every account to `editor`.
  const found = await users._find({ query: { email }, paginate: false });
  if (found.length > 0) {
    const [account] = found;
    if (account.role !== role) {
      // Never promote (or demote) an account someone made through the API.
      fail(`${names[0]} is the email of an existing ${account.role} account: choose another email for the ${role}`);
    }
    await users._patch(account._id, { password: hashed, tokenVersion: nextTokenVersion(account) });
  } else {
    await users._create({ email, password: hashed, role, tokenVersion: 0 });
  }
  logger.info('%s account %s is ready', role, email);
  return true;
}

async function ensureAccounts(app, { fail, logger }) {
  const { workerEmail, workerPassword, adminEmail, adminPassword } = app.get('marcelleTorch') || {};
  if (workerEmail && adminEmail && workerEmail.trim().toLowerCase() === adminEmail.trim().toLowerCase()) {
    fail('MARCELLE_ADMIN_EMAIL and MARCELLE_WORKER_EMAIL must be two different accounts');
  }
  const accounts = [
    { role: 'worker', email: workerEmail, password: workerPassword, variable: 'MARCELLE_WORKER' },
    { role: 'admin', email: adminEmail, password: adminPassword, variable: 'MARCELLE_ADMIN' },
  ];
  for (const { variable, ...account } of accounts) {
    const names = [`${variable}_EMAIL`, `${variable}_PASSWORD`];
    if (!(await ensureAccount(app, { ...account, names, fail, logger }))) {
      logger.warn(`authentication is on and no ${account.role} account is configured (${variable}_EMAIL/_PASSWORD)`);
    }
  }
}

async function raiseTokenVersion(users, id) {
  await users._patch(id, { tokenVersion: nextTokenVersion(await users._get(id)) });
}

/** The hooks and strategy settings above; `owned`: the services whose records have a `userId`. */
async function installAccountRules(app, owned) {
  const auth = app.service('authentication');
  const users = app.service('users');

  // @feathersjs/authentication 4.5 lib/service.js: create() signs getPayload()'s answer.
  const basePayload = auth.getPayload.bind(auth);
  auth.getPayload = async (authResult, params) => ({
    ...(await basePayload(authResult, params)),
    tv: (authResult.user && authResult.user.tokenVersion) || 0,
  });

  // @feathersjs/authentication-local 4.5 lib/strategy.js: authenticate() is findEntity, then
  // comparePassword. An unknown email becomes an account whose hash matches no password.
  const [local] = auth.getStrategies('local');
  const noAccount = { password: await local.hashPassword(crypto.randomBytes(32).toString('hex'), {}) };
  const findEntity = local.findEntity.bind(local);
  local.findEntity = async (username, params) => {
    try {
      return await findEntity(username, params);
    } catch (error) {
      if (error instanceof NotAuthenticated) return noAccount;
      throw error;
    }
  };

  auth.hooks({
    after: {
      // A login with a token (strategy jwt) gives the same token back: it must still be valid.
      create: [
        (context) => {
          const { authentication, user } = context.result;
          if (context.params.provider && authentication && authentication.strategy === 'jwt') {
            checkTokenVersion(authentication.payload, user);
          }
          return context;
        },
      ],
      // Logout: every token of the account stops working.
      remove: [
        async (context) => {
          const { authentication, user } = context.result;
          if (context.params.provider && user) {
            checkTokenVersion(authentication && authentication.payload, user);
            await raiseTokenVersion(users, user._id);
          }
          return context;
        },
      ],
    },
  });
  users.hooks({
    before: {
      // A password change ends every session of the account (access.js lets only the owner).
      patch: [
        async (context) => {
          if (context.params.provider) {
            context.data = { ...context.data, tokenVersion: nextTokenVersion(await users._get(context.id)) };
          }
          return context;
        },
      ],
    },
    after: {
      // An account's runs and instances go with it.
      remove: [
        async (context) => {
          for (const service of owned) {
            await service._remove(null, { query: { userId: String(context.result._id) }, paginate: false });
          }
          return context;
        },
      ],
    },
  });
}

module.exports = { ensureAccounts, installAccountRules };
