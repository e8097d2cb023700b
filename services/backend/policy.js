// Who may do what on this backend, said once. Everything else reads it:
// - access.js enforces it on every external call (REST and Socket.IO), before any hook of the
//   package runs;
// - validation.js picks the schema of a run patch from the caller's grant (cancel, or the
//   worker's progress);
// - start.js gives the package (@marcellejs/backend 0.6.5: its feathers-casl hooks, its real-time
//   channels, the `rules` a login answers) the CASL `permissions` derived from it
//   (`caslPermissions`), so the package's own checks and this project's cannot disagree;
// - the docs' Security page renders its table from `node policy.js` (JSON; docs/gen/), and
//   tests/reliability/test_access_policy.py checks that it says what the tested expectations
//   (tests/reliability/access_table.py) say.
// No dependency: the docs build runs this file with any Node, without node_modules.
'use strict';

const ALL = 'all';
const OWN = 'own';

/**
 * Who calls. With authentication off everyone is `auth off`, trusted as the worker is (the
 * local demo). With it on: `anonymous` (no valid token), or the role of the caller's account.
 * Accounts made through the API are `editor`s (the package forces the role; the schema of a new
 * account has no `role`); start.js makes the `worker` and `admin` accounts from the environment.
 * A role not listed here has no grant at all.
 */
const CALLERS = ['auth off', 'anonymous', 'editor', 'worker', 'admin'];
const ROLES = ['editor', 'worker', 'admin'];

/**
 * The services clients may call.
 * - methods: what clients may call on it at all; any other method is 405 for everyone.
 * - oneAtATime: the methods of `patch` and `remove` that take an id (405 without: no
 *   many-at-once writes). Instances are removed many at once by Marcelle's `dataset.clear()`.
 * - owner: the field that names a record's owner, for `own` grants: a run's or an instance's
 *   `userId` (stamped by the package on create), an account's own `_id`.
 * - auth: served only with authentication on.
 * - data: a data service of whitelist.services; `*` is any other one configured there.
 */
const SERVICES = {
  runs: {
    what: 'runs',
    data: true,
    methods: ['find', 'get', 'create', 'patch', 'remove'],
    oneAtATime: ['patch', 'remove'],
    owner: 'userId',
  },
  // Marcelle's `dataset('teach', store)` (@marcellejs/core 0.6.5 Dataset) keeps its instances
  // {x, y, thumbnail, datasetName} here; training runs with input {dataset: 'teach'} read them.
  'instances-teach': {
    what: "the Teach page's instances",
    data: true,
    methods: ['find', 'get', 'create', 'patch', 'remove'],
    oneAtATime: ['patch'],
    owner: 'userId',
  },
  users: {
    what: 'accounts',
    auth: true,
    methods: ['find', 'get', 'create', 'patch', 'remove'],
    oneAtATime: ['patch', 'remove'],
    owner: '_id',
  },
  authentication: { what: 'logins', auth: true, methods: ['create', 'remove'] },
  info: { what: 'the service list', methods: ['find'] },
  'served-models': { what: 'the served models', methods: ['find'] },
  '*': { what: 'other data services', data: true, methods: ['find', 'get', 'create', 'update', 'patch', 'remove'] },
};

/** Conditions a grant may depend on: the deployment's settings. */
const CONDITIONS = {
  allowSignup: 'Sign-up (authentication.allowSignup, MARCELLE_BACKEND_ALLOW_SIGNUP)',
};

/**
 * What a caller may write, where a method's grant limits it (validation.js holds the schemas).
 */
const WRITES = {
  run: '{model, input, params}, without params.publish',
  'run or publish': '{model, input, params}, params.publish (a model version to publish, or null) too',
  progress: "the worker's fields: claim, progress, partial, result, error, heartbeat, release",
  cancel: "{status: 'canceled'} only",
  password: '{password} only (every earlier token of the account ends)',
  'editor account': '{email, password}: the server makes the id, and the role is always editor',
};

/**
 * The grants: caller -> service -> method -> scope (`all`, or `own`: the caller's records only;
 * another's is not found), or {scope, write, when}. `anyone` is every caller, without logging
 * in (with authentication on, a token is not even read). `because` says why a role has no more
 * than its grants (in the message of a refused call).
 */
const GRANTS = {
  anyone: {
    authentication: { create: ALL, remove: ALL }, // log in; log out (the service checks the token)
    users: { create: { scope: ALL, when: 'allowSignup', write: 'editor account' } },
    info: { find: ALL },
    'served-models': { find: ALL },
  },
  'auth off': {
    runs: {
      find: ALL,
      get: ALL,
      create: { scope: ALL, write: 'run or publish' },
      patch: { scope: ALL, write: 'progress' },
      remove: ALL,
    },
    'instances-teach': { find: ALL, get: ALL, create: ALL, patch: ALL, remove: ALL },
    '*': { find: ALL, get: ALL, create: ALL, update: ALL, patch: ALL, remove: ALL },
  },
  anonymous: {},
  // A user: their own runs (a cancel is their only patch; they publish no model version); their
  // own instances; their own account.
  editor: {
    runs: {
      find: OWN,
      get: OWN,
      create: { scope: OWN, write: 'run' },
      patch: { scope: OWN, write: 'cancel' },
      remove: OWN,
    },
    'instances-teach': { find: OWN, get: OWN, create: OWN, patch: OWN, remove: OWN },
    users: { find: OWN, get: OWN, patch: { scope: OWN, write: 'password' }, remove: OWN },
  },
  // The run worker: reads and patches every run (claim, progress, result); reads every instance
  // (a training run's data); nothing else.
  worker: {
    runs: { find: ALL, get: ALL, patch: { scope: ALL, write: 'progress' } },
    'instances-teach': {
      find: ALL,
      get: ALL,
      because: 'it reads the instances a training run learns from, and writes none',
    },
    users: {
      find: OWN,
      get: OWN,
      because: 'its account is managed by the deployment (environment), not through the API',
    },
  },
  // The app's admin: every run (it cancels, it does not report progress; it publishes model
  // versions); reads and removes every instance, and makes its own; reads every account and makes
  // editor accounts; changes and deletes none (its own is the deployment's).
  admin: {
    runs: {
      find: ALL,
      get: ALL,
      create: { scope: ALL, write: 'run or publish' },
      patch: { scope: ALL, write: 'cancel' },
      remove: ALL,
    },
    'instances-teach': {
      find: ALL,
      get: ALL,
      create: OWN,
      remove: ALL,
      because: "it changes no user's instances",
    },
    users: {
      find: ALL,
      get: ALL,
      create: { scope: ALL, write: 'editor account' },
      because: 'it changes and deletes no account; its own is managed by the deployment (environment)',
    },
  },
};

const has = (object, key) => Object.prototype.hasOwnProperty.call(object, key);

/** The policy entry of a service name: its own, or `*` for another data service. */
function serviceOf(name, dataServices = []) {
  if (name !== '*' && has(SERVICES, name)) return name;
  return dataServices.includes(name) ? '*' : null;
}

/** A grant in its full form {scope, write, when}, or null. */
function grantOf(caller, service, method) {
  const services = has(GRANTS, caller) ? GRANTS[caller] : {};
  const methods = has(services, service) ? services[service] : {};
  if (method === 'because' || !has(methods, method)) return null;
  const grant = methods[method];
  return typeof grant === 'string' ? { scope: grant } : { ...grant };
}

/** Whether a call needs no login: granted to anyone, under the deployment's settings. */
function isPublic(service, method, settings = {}) {
  const grant = grantOf('anyone', service, method);
  return Boolean(grant && (!grant.when || settings[grant.when] === true));
}

/**
 * The grants' name for the caller of a call: `auth off` (role null: authentication off), one of
 * ROLES, or null for any other role (an account's role is data: only these have grants).
 */
function callerOf(role) {
  if (role === null) return 'auth off';
  return ROLES.includes(role) ? role : null;
}

/** What a caller (`role`, null with authentication off) may write with this method, or null. */
function writeOf(role, service, method) {
  const grant = grantOf(callerOf(role), service, method);
  return grant ? grant.write || null : null;
}

/** Why this method is never called this way (405), or null. */
function methodProblem(service, method, id) {
  const { what, methods, oneAtATime } = SERVICES[service];
  if (!methods.includes(method)) {
    return method === 'update' && methods.includes('patch')
      ? `${what} are changed with patch, not update`
      : `${what} have no method ${method}`;
  }
  if (oneAtATime && oneAtATime.includes(method) && (id === null || id === undefined)) {
    return `${what} are ${method === 'patch' ? 'patched' : 'removed'} one at a time (give an id)`;
  }
  return null;
}

const listed = (words) => (words.length < 2 ? words.join('') : `${words.slice(0, -1).join(', ')} and ${words.at(-1)}`);

/**
 * The decision on a call that needs a caller (not public), once it is known: `role` is the
 * account's (null with authentication off), `self` the account's id. Either
 * {query: fields to add to the call's query (own records), or null}, or
 * {refused: 403 | 404, message}. A record the caller may not read is not found (404), where
 * its id says whose it is (accounts); anything else the role may not do is 403.
 */
function decide({ role, service, method, id, self }) {
  const { what, owner } = SERVICES[service];
  const caller = callerOf(role);
  const grant = grantOf(caller, service, method);
  const hasId = id !== null && id !== undefined;
  const ownId = owner === '_id' && hasId && String(id) === String(self);
  const notFound = { refused: 404, message: `No record found for id '${id}'` };
  if (!grant) {
    const read = grantOf(caller, service, 'get');
    if (owner === '_id' && hasId && !(read && (read.scope === ALL || ownId))) return notFound;
    return { refused: 403, message: refusal(caller, role, service, method) };
  }
  if (grant.scope === ALL || method === 'create') return { query: null };
  // Own records only. An account's id is its owner's: compared here (a get reads by id, whatever
  // the query says). A run's owner is a field: the query keeps others' runs out (404 for one).
  if (owner === '_id' && hasId) return ownId ? { query: null } : notFound;
  if (!owner) throw new Error(`policy: ${role} ${service}.${method} is "own", and ${what} have no owner`);
  return { query: { [owner]: self } };
}

function refusal(caller, role, service, method) {
  const { what } = SERVICES[service];
  const open = grantOf('anyone', service, method);
  if (open && open.when) {
    const roles = ROLES.filter((other) => grantOf(other, service, method));
    const by = roles.length > 0 ? `only the ${listed(roles)} account${roles.length > 1 ? 's' : ''}` : 'nobody';
    return `${CONDITIONS[open.when]} is off: ${by} may ${method} ${what}`;
  }
  const grants = has(GRANTS, caller) && has(GRANTS[caller], service) ? GRANTS[caller][service] : {};
  const methods = SERVICES[service].methods.filter((m) => grantOf(caller, service, m));
  if (methods.length === 0) return `The role ${JSON.stringify(role)} has no access to ${what}`;
  const because = grants.because ? `: ${grants.because}` : '';
  return `The ${caller} account may only ${listed(methods)} ${what}${because}`;
}

/** The services a client may name: this policy's (auth ones with authentication on) and the data services. */
function servedNames(dataServices, authEnabled) {
  const own = Object.keys(SERVICES).filter((name) => name !== '*' && !SERVICES[name].data);
  return new Set([...dataServices, ...own.filter((name) => authEnabled || !SERVICES[name].auth)]);
}

// CASL actions of the package's rules (lib/authentication/abilities.js: `read` is find and get,
// `update` is patch (and update, which access.js refuses first), `delete` is remove; `manage` is
// every method) and the methods each stands for here.
const CASL_ACTIONS = [
  ['read', ['find', 'get']],
  ['create', ['create']],
  ['update', ['patch']],
  ['delete', ['remove']],
];
const CASL_METHODS = CASL_ACTIONS.flatMap(([, methods]) => methods);

/**
 * The package's `permissions` (role -> CASL rules, "${user._id}" for the caller's id) for the
 * roles' grants on the services the package checks with CASL (the data services and `users`).
 * A method granted alone where its CASL action covers more (find without get) cannot be said,
 * and throws.
 */
function caslPermissions() {
  const permissions = {};
  for (const role of ROLES) {
    const rules = [];
    for (const service of Object.keys(GRANTS[role])) {
      if (!SERVICES[service].data && service !== 'users') continue;
      const rule = (action, scope) => ({
        action,
        subject: service,
        ...(scope === OWN ? { conditions: { [SERVICES[service].owner]: '${user._id}' } } : {}),
      });
      const scopes = (methods) => new Set(methods.map((m) => (grantOf(role, service, m) || {}).scope));
      const every = scopes(CASL_METHODS);
      if (every.size === 1 && !every.has(undefined)) {
        rules.push(rule('manage', [...every][0]));
        continue;
      }
      for (const [action, methods] of CASL_ACTIONS) {
        const these = scopes(methods);
        if (these.size === 1 && these.has(undefined)) continue;
        if (these.size !== 1) {
          throw new Error(
            `policy: ${role} ${service}: ${methods.join(' and ')} go together, with one scope (CASL "${action}")`,
          );
        }
        rules.push(rule(action, [...these][0]));
      }
    }
    permissions[role] = rules;
  }
  return permissions;
}

/** The whole policy as data: what `node policy.js` prints (the docs render it). */
function describe() {
  const grants = {};
  for (const caller of ['anyone', ...CALLERS]) {
    grants[caller] = {};
    for (const service of Object.keys(SERVICES)) {
      const methods = {};
      for (const method of SERVICES[service].methods) {
        const grant = grantOf(caller, service, method);
        if (grant) methods[method] = grant;
      }
      if (Object.keys(methods).length > 0) grants[caller][service] = methods;
    }
  }
  return {
    callers: CALLERS,
    roles: ROLES,
    services: SERVICES,
    conditions: CONDITIONS,
    writes: WRITES,
    grants,
    casl: caslPermissions(),
  };
}

module.exports = {
  CALLERS,
  ROLES,
  SERVICES,
  serviceOf,
  grantOf,
  isPublic,
  writeOf,
  methodProblem,
  decide,
  servedNames,
  caslPermissions,
  describe,
};

if (require.main === module) {
  process.stdout.write(`${JSON.stringify(describe(), null, 2)}\n`);
}
