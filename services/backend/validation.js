// The edge: every external call (REST and Socket.IO alike) is checked here before any hook of
// Feathers, the package or the database adapter sees it. Two layers:
//
// 1. `checkShape` (every service, every caller, before authentication): the id is a plain id,
//    and data and query are trees of plain JSON at most MAX_DEPTH deep with no `__proto__`,
//    `constructor` or `prototype` key anywhere. In data, no key starts with `$` or holds a `.`:
//    feathers-nedb and feathers-mongodb turn such keys into update operators and dotted paths
//    (NeDB 1.8 lib/model.js walks dotted paths through `__proto__`: prototype pollution), and
//    @feathersjs/adapter-commons 4.5 lib/filter-query.js checks operators only in objects whose
//    `constructor` is Object (an own `constructor` key skips it). The walk is iterative, so a
//    document nested 100,000 deep is a 400, not a stack overflow.
// 2. `checkCall` (after authentication, per service, method and role): JSON schemas (ajv,
//    additionalProperties false) of what each role may write and query; query operators only
//    from a per-field allow-list, and none on `password`; a run that publishes a model version
//    only where the caller's grant says so (policy.js: `run or publish`), else 403.
'use strict';

const Ajv = require('ajv');
const { BadRequest, Forbidden } = require('@feathersjs/errors');
const { STATUSES } = require('./runs-hooks');
const policy = require('./policy');

const MAX_DEPTH = 32;
const FORBIDDEN_KEYS = new Set(['__proto__', 'constructor', 'prototype']);
// Ids the databases make: NeDB's 16 characters, MongoDB's 24 hex digits.
const ID = /^[A-Za-z0-9_-]{1,64}$/;
// Logout (authentication.remove) takes the access token as its id.
const TOKEN = /^[A-Za-z0-9_.-]{1,4096}$/;

const describe = (path) => (path.length > 0 ? path.join('.') : '(top level)');

/**
 * Walks `value` (iteratively): throws BadRequest naming the first forbidden key, a key that
 * looks like an operator or path where `operators` is false, or nesting past MAX_DEPTH.
 */
function checkTree(value, { what, operators }) {
  const stack = [[value, []]];
  while (stack.length > 0) {
    const [node, path] = stack.pop();
    if (node === null || typeof node !== 'object') continue;
    if (path.length >= MAX_DEPTH) {
      throw new BadRequest(`${what} is nested deeper than ${MAX_DEPTH} levels (at ${describe(path.slice(0, 3))}...)`);
    }
    const isArray = Array.isArray(node);
    if (!isArray && Object.getPrototypeOf(node) !== Object.prototype && Object.getPrototypeOf(node) !== null) {
      throw new BadRequest(`${what} must be plain JSON (at ${describe(path)})`);
    }
    for (const key of Object.keys(node)) {
      if (!isArray) {
        if (FORBIDDEN_KEYS.has(key)) throw new BadRequest(`${what} may not have a key named "${key}"`);
        if (!operators && (key.startsWith('$') || key.includes('.'))) {
          throw new BadRequest(`${what} may not have a key that starts with $ or holds a dot: "${key}"`);
        }
      }
      stack.push([node[key], [...path, key]]);
    }
  }
}

// @marcellejs/backend 0.6.5 lib/app.hooks.js (convertDateQueries, an app hook) turns the
// createdAt and updatedAt $gt/$gte/$lt/$lte values of every query into Dates, in place. A REST
// call goes through the package's `:serviceName` service, whose hooks run first, so the data
// service's own call then carries those Dates: JSON makes none, so each is turned back into the
// text it was, and checked as such (the package converts it again). A text that is no date is
// refused.
const DATE_FIELDS = ['createdAt', 'updatedAt'];
const DATE_OPERATORS = ['$gt', '$gte', '$lt', '$lte'];

function checkDateQueries(query) {
  for (const field of DATE_FIELDS) {
    const ops = query[field];
    if (ops === null || typeof ops !== 'object') continue;
    for (const op of DATE_OPERATORS) {
      const value = ops[op];
      if (!(value instanceof Date) && typeof value !== 'string') continue; // the schema says
      // The package would make an Invalid Date of a text that is none, which matches nothing.
      const date = value instanceof Date ? value : new Date(value);
      if (Number.isNaN(date.getTime()))
        throw new BadRequest(`query.${field}.${op} is not a date: ${String(value).slice(0, 64)}`);
      if (value instanceof Date) ops[op] = value.toISOString();
    }
  }
}

/** Layer 1, for every external call: the id, data and query are plain, bounded JSON. */
function checkShape(context) {
  const { id, data, params } = context;
  // REST calls to data services pass through the package's `:serviceName` service first.
  const name = context.path === ':serviceName' && params.route ? params.route.serviceName : context.path;
  if (id !== undefined && id !== null) {
    const pattern = name === 'authentication' ? TOKEN : ID;
    if (typeof id !== 'string' || !pattern.test(id)) throw new BadRequest(`${name}: the id is not a valid id`);
  }
  if (data !== undefined) checkTree(data, { what: `${name}.${context.method} data`, operators: false });
  if (params.query !== undefined) {
    if (params.query === null || typeof params.query !== 'object' || Array.isArray(params.query)) {
      throw new BadRequest(`${name}: the query must be an object`);
    }
    checkDateQueries(params.query);
    checkTree(params.query, { what: `${name}.${context.method} query`, operators: true });
  }
}

// ---------------------------------------------------------------------------- schemas

const text = (maxLength, minLength = 0) => ({ type: 'string', minLength, maxLength });
const nullable = (schema) => ({ anyOf: [schema, { type: 'null' }] });
const object = (properties, required = []) => ({ type: 'object', properties, required, additionalProperties: false });
// REST query strings carry every value as a string: `$limit=10`, `$sort[createdAt]=-1`.
const count = {
  anyOf: [
    { type: 'integer', minimum: 0 },
    { type: 'string', pattern: '^[0-9]{1,9}$' },
  ],
};
const direction = { enum: [1, -1, '1', '-1'] };

/** A field's condition: a value, or an object of operators from `ops`. */
function condition(value, ops) {
  const operators = {};
  for (const op of ops) {
    operators[op] = ['$in', '$nin'].includes(op) ? { type: 'array', items: value, maxItems: 100 } : value;
  }
  return { anyOf: [value, { ...object(operators), minProperties: 1 }] };
}

/**
 * A find query over `fields` ({name: condition schema}), sorted by those fields, and selecting
 * any of `selectable` (every field a document shows); `more`: other properties it may have.
 */
function query(fields, selectable, more = {}) {
  const names = Object.keys(fields);
  return object({
    ...fields,
    $limit: count,
    $skip: count,
    $sort: { type: 'object', propertyNames: { enum: names }, additionalProperties: direction },
    $select: { type: 'array', items: { enum: selectable }, maxItems: selectable.length },
    ...more,
  });
}

const EQUALITY = ['$ne', '$in', '$nin'];
// A time as the backend stamps it (ISO 8601, `2026-12-06T01:02:03.456Z`) or its first part.
const timeText = {
  type: 'string',
  maxLength: 64,
  pattern: '^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9:.]+(Z|[+-][0-9]{2}:?[0-9]{2})?)?$',
};
const ORDER = ['$lt', '$lte', '$gt', '$gte', '$ne'];
const idValue = { type: 'string', pattern: ID.source };
const shortText = nullable(text(256));

const runFields = {
  _id: condition(idValue, EQUALITY),
  model: condition(text(200), EQUALITY),
  status: condition({ enum: STATUSES }, EQUALITY),
  worker: condition(shortText, EQUALITY),
  heartbeatAt: condition(shortText, ORDER),
  createdAt: condition(timeText, ORDER),
  updatedAt: condition(timeText, ORDER),
  userId: condition(idValue, EQUALITY),
};

// Marcelle's own client (@marcellejs/core 0.6.5 dataStore, its app hook on `create`) stamps
// `createdAt` and `updatedAt` on everything it creates, logins included.
const stamps = { createdAt: text(64), updatedAt: text(64) };

// A model version (the store's content address: training/ and models/store).
const VERSION = '^[0-9a-f]{12}$';

// Instances of Marcelle's `dataset(name, store)` (@marcellejs/core 0.6.5 class Dataset): its
// hooks add `datasetName` (addScope) and turn an ImageData `x` into
// `canvas.toDataURL('image/jpeg')` (imageData2DataURL); its components' thumbnails are JPEG data
// URLs too. PNG and WebP are taken from other clients (the REST API). Its queries: `datasetName`
// always (limitToScope), `y` (a label's instances), $sort by updatedAt, $select with `id` (its
// renameIdField adds `_id`), $limit/$skip, and `$distinct: 'y'` (the labels, dataset.distinct).
const MAX_INSTANCE_X = 1024 * 1024;
const MAX_THUMBNAIL = 64 * 1024;
const imageUrl = (maxLength) => ({
  type: 'string',
  maxLength,
  pattern: '^data:image/(jpeg|png|webp);base64,[A-Za-z0-9+/]+={0,2}$',
});
const label = text(64, 1);
const instanceFields = {
  _id: condition(idValue, EQUALITY),
  datasetName: condition(label, EQUALITY),
  y: condition(label, EQUALITY),
  userId: condition(idValue, EQUALITY),
  createdAt: condition(timeText, ORDER),
  updatedAt: condition(timeText, ORDER),
};
const instanceData = { x: imageUrl(MAX_INSTANCE_X), y: label, thumbnail: imageUrl(MAX_THUMBNAIL) };

const schemas = {
  runsQuery: query(runFields, [
    ...Object.keys(runFields),
    ...['input', 'inputBytes', 'params', 'progress', 'partial', 'result', 'error', 'revision', 'leaseSeconds'],
  ]),
  // params is loose (a model's own), but params.train is an object (a training run) and
  // params.publish a model version, or null: the model's own weights again.
  runCreate: object(
    {
      model: text(200, 1),
      input: {},
      params: {
        type: 'object',
        properties: {
          train: { type: 'object' },
          publish: nullable({ type: 'string', pattern: VERSION }),
        },
      },
      ...stamps,
    },
    ['model', 'input'],
  ),
  // What the worker writes: claim, progress, partial, result, error, heartbeat, release.
  // `heartbeatAt` is stamped with the backend's time (run-queue.js); `leaseSeconds` is how long
  // the claiming worker's lease lasts without a renewal.
  workerPatch: {
    ...object({
      status: { enum: STATUSES },
      worker: nullable(text(200, 1)),
      heartbeatAt: nullable(text(64, 1)),
      leaseSeconds: nullable({ type: 'number', minimum: 1, maximum: 86400 }),
      progress: { type: 'number', minimum: 0, maximum: 1 },
      partial: {},
      result: {},
      error: nullable(text(10000)),
    }),
    minProperties: 1,
  },
  // No operator and no field but these: never `password` (its hash could be searched for).
  usersQuery: query(
    {
      _id: idValue,
      email: text(254),
      role: text(64),
      createdAt: condition(timeText, ORDER),
    },
    ['_id', 'email', 'role', 'createdAt', 'updatedAt'],
  ),
  userCreate: object(
    { email: { type: 'string', pattern: '^[^\\s@]+@[^\\s@]+$', maxLength: 254 }, password: text(72, 8), ...stamps },
    ['email', 'password'],
  ),
  userPatch: object({ password: text(72, 8) }, ['password']),
  loginLocal: object({ strategy: { const: 'local' }, email: text(254, 1), password: text(1024, 1), ...stamps }, [
    'strategy',
    'email',
    'password',
  ]),
  loginJwt: object({ strategy: { const: 'jwt' }, accessToken: text(4096, 1), ...stamps }, ['strategy', 'accessToken']),
  instancesQuery: query(
    instanceFields,
    ['_id', 'id', 'x', 'y', 'thumbnail', 'datasetName', 'userId', 'createdAt', 'updatedAt'],
    {
      $distinct: { enum: ['y', 'datasetName', 'userId'] },
      // The package's distinct (lib/services/generic/generic.hooks.js) finds again with the query
      // its CASL hook has made: the owner's condition in an `$and`.
      $and: { type: 'array', items: object(instanceFields), maxItems: 8 },
    },
  ),
  instanceCreate: object({ ...instanceData, datasetName: label, ...stamps }, ['x', 'y', 'datasetName']),
  instancePatch: { ...object({ ...instanceData, updatedAt: text(64) }), minProperties: 1 },
  empty: object({}),
};

const ajv = new Ajv({ allErrors: false, strict: true, allowUnionTypes: true });
const validators = Object.fromEntries(Object.entries(schemas).map(([name, schema]) => [name, ajv.compile(schema)]));

/** ajv's first error, said for a person: where, and what was wrong. */
function explain(errors) {
  const [error] = errors;
  const where = error.instancePath ? error.instancePath.slice(1).replace(/\//g, '.') : '(top level)';
  if (error.keyword === 'additionalProperties') {
    return `${where === '(top level)' ? '' : `${where}: `}"${error.params.additionalProperty}" is not allowed`;
  }
  if (error.keyword === 'propertyNames') return `${where}: "${error.params.propertyName}" is not allowed`;
  if (error.keyword === 'required') return `${error.params.missingProperty} is missing`;
  if (error.keyword === 'enum') return `${where} must be one of ${error.params.allowedValues.join(', ')}`;
  return `${where} ${error.message}`;
}

function validate(name, value, what) {
  const check = validators[name];
  if (!check(value === undefined ? {} : value)) throw new BadRequest(`${what}: ${explain(check.errors)}`);
}

/**
 * Layer 2: what this caller (`role`: admin, editor, worker, or null when authentication is off
 * and every caller is trusted as the worker is) may send to `runs`, `users`, `authentication`.
 * Who may call what is policy.js's (access.js decides after this check).
 */
function checkCall(context, role) {
  const { path, method, data, params } = context;
  const q = params.query;
  if (path === 'runs') {
    validate('runsQuery', q, `runs.${method} query`);
    if (method === 'create') {
      if (Array.isArray(data))
        throw new BadRequest('runs.create: create one run at a time: send an object {model, input, params}');
      const params = data && typeof data === 'object' ? data.params : undefined;
      const publishes = params && typeof params === 'object' && Object.prototype.hasOwnProperty.call(params, 'publish');
      if (publishes && policy.writeOf(role, 'runs', 'create') !== 'run or publish') {
        throw new Forbidden('runs.create: only the admin publishes a model version (params.publish)');
      }
      validate('runCreate', data, 'runs.create');
    }
    if (method === 'patch') {
      // What the caller's grant lets it write (policy.js): the worker's fields, or a cancel (also
      // for a caller without the grant, which is refused after this check).
      const progress = policy.writeOf(role, 'runs', 'patch') === 'progress';
      if (!progress && !(data && data.status === 'canceled' && Object.keys(data).length === 1)) {
        throw new BadRequest("runs.patch: a client may only cancel a run: patch it with {status: 'canceled'}");
      }
      validate('workerPatch', data, 'runs.patch');
    }
  } else if (path.startsWith('instances-') && policy.serviceOf(path) === path) {
    validate('instancesQuery', q, `${path}.${method} query`);
    if (method === 'create') {
      if (Array.isArray(data)) {
        throw new BadRequest(
          `${path}.create: create one instance at a time: send an object {x, y, thumbnail, datasetName}`,
        );
      }
      validate('instanceCreate', data, `${path}.create`);
    }
    if (method === 'patch') validate('instancePatch', data, `${path}.patch`);
  } else if (path === 'users') {
    validate(method === 'find' ? 'usersQuery' : 'empty', q, `users.${method} query`);
    if (method === 'create') validate('userCreate', data, 'users.create');
    if (method === 'patch') validate('userPatch', data, 'users.patch');
  } else if (path === 'served-models') {
    validate('empty', q, `served-models.${method} query`);
  } else if (path === 'authentication') {
    validate('empty', q, `authentication.${method} query`);
    if (method === 'create') {
      const strategy = data && typeof data === 'object' ? data.strategy : undefined;
      if (strategy === 'local') validate('loginLocal', data, 'login');
      else if (strategy === 'jwt') validate('loginJwt', data, 'login');
      else throw new BadRequest('login: strategy must be "local" (email, password) or "jwt" (accessToken)');
    }
  }
}

/**
 * Defence in depth, for a write that gets past the checks above: without the accessor
 * `Object.prototype.__proto__`, `obj['__proto__']` is an ordinary own key, so a walk of a
 * dotted path (NeDB's, lodash's) can no longer reach Object.prototype. What
 * `node --disable-proto=delete` does, but done once every module is loaded: socket.io 2.5
 * (under @feathersjs/socketio 4) sets `X.prototype.__proto__ = Emitter.prototype` as it loads,
 * which the flag turns into a plain key (its namespaces then lack EventEmitter's methods).
 */
function removeProtoAccessor() {
  delete Object.prototype.__proto__;
}

module.exports = { checkShape, checkCall, checkTree, removeProtoAccessor, MAX_DEPTH, MAX_INSTANCE_X, schemas };
