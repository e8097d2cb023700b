// Hooks of the `runs` service, added after the package's own (authentication, ownership
// through `userId`, timestamps). A run document:
//   {model, input, params, status, progress, partial, result, error, worker,
//    heartbeatAt, revision, createdAt, updatedAt, userId (when authentication is on)}
// Clients create runs and may cancel them; the worker account updates everything else.
// Who may call which method on which run is decided before these hooks (access.js); these
// check the shapes. With authentication off every caller is trusted (local demo).
'use strict';

const crypto = require('crypto');

const STATUSES = ['pending', 'running', 'succeeded', 'failed', 'canceled'];
const ACTIVE = ['pending', 'running'];
const FINISHED = STATUSES.filter((status) => !ACTIVE.includes(status));
const MAX_MODEL_LENGTH = 200;
const MAX_INPUT_BYTES = 4 * 1024 * 1024;

function runsHooks({ authEnabled, errors }) {
  const { BadRequest, MethodNotAllowed } = errors;

  const isWorker = (params) => !authEnabled || (params.user && params.user.role === 'worker');

  function validateCreate(context) {
    if (!context.params.provider) return context;
    const data = context.data;
    if (Array.isArray(data) || data === null || typeof data !== 'object') {
      throw new BadRequest('create one run at a time: send an object {model, input, params}');
    }
    const { model, input, params = {} } = data;
    if (typeof model !== 'string' || model.length === 0 || model.length > MAX_MODEL_LENGTH) {
      throw new BadRequest('run.model must be a model name (a non-empty string)');
    }
    if (input === undefined) {
      throw new BadRequest('run.input is missing');
    }
    if (params === null || typeof params !== 'object' || Array.isArray(params)) {
      throw new BadRequest('run.params must be an object');
    }
    if (JSON.stringify(input).length > MAX_INPUT_BYTES) {
      throw new BadRequest(`run.input is larger than ${MAX_INPUT_BYTES} bytes`);
    }
    // A new run always starts pending and empty, whatever the client sent.
    context.data = {
      model,
      input,
      params,
      status: 'pending',
      progress: 0,
      partial: null,
      result: null,
      error: null,
      worker: null,
      heartbeatAt: null,
      createdAt: data.createdAt,
      updatedAt: data.updatedAt,
    };
    if (data.userId !== undefined) context.data.userId = data.userId;
    return context;
  }

  function validatePatch(context) {
    if (!context.params.provider) return context;
    if (context.id === null || context.id === undefined) {
      throw new MethodNotAllowed('runs are patched one at a time (give an id)');
    }
    const data = context.data || {};
    if ('status' in data && !STATUSES.includes(data.status)) {
      throw new BadRequest(`run.status must be one of ${STATUSES.join(', ')}`);
    }
    if ('progress' in data && (typeof data.progress !== 'number' || !(data.progress >= 0 && data.progress <= 1))) {
      throw new BadRequest('run.progress must be a number from 0 to 1');
    }
    if (data.status === 'canceled') {
      // Only a run that has not finished can be canceled (NotFound otherwise).
      context.params.query = { ...(context.params.query || {}), status: { $in: ACTIVE } };
    }
    // The package stamps the caller's id on every write (lib/utils/permission-hooks.js
    // setField); a run keeps its owner's, whoever patches it (worker, admin).
    if (authEnabled) delete data.userId;
    if (isWorker(context.params)) return context;
    // An owner (or the admin) may only cancel.
    const allowed = new Set(['status', 'updatedAt']);
    const extra = Object.keys(data).filter((k) => !allowed.has(k));
    if (extra.length > 0 || data.status !== 'canceled') {
      throw new BadRequest("a client may only cancel a run: patch it with {status: 'canceled'}");
    }
    return context;
  }

  // A patch with conditions (e.g. a worker's claim: {status: 'running'} only where
  // {status: 'pending'}) must answer with the patched run when it applied, and NotFound
  // when it did not. The database adapters (feathers-nedb, feathers-mongodb) write with the
  // conditions atomically but then read the run back with the same conditions, which a
  // patch of a conditioned field no longer meets: the write happens and the call still
  // answers NotFound (and no `patched` event goes out). Each conditional patch therefore
  // writes a fresh `revision` and is read back by "the conditions, or this revision".
  function exactConditionalPatch(context) {
    const query = context.params.query || {};
    const conditions = {};
    const rest = {};
    for (const [key, value] of Object.entries(query)) {
      if (key === '_id' || ['$limit', '$skip', '$sort', '$select'].includes(key)) rest[key] = value;
      else conditions[key] = value;
    }
    if (context.id === null || context.id === undefined || Object.keys(conditions).length === 0) return context;
    const revision = crypto.randomUUID();
    context.data = { ...context.data, revision };
    // Before the write no run has this revision, so only the conditions can match.
    context.params.query = { ...rest, $or: [conditions, { revision }] };
    return context;
  }

  function refuseUpdate(context) {
    if (context.params.provider) {
      throw new MethodNotAllowed('runs are changed with patch, not update');
    }
    return context;
  }

  return {
    before: {
      create: [validateCreate],
      update: [refuseUpdate],
      patch: [validatePatch, exactConditionalPatch],
    },
  };
}

module.exports = { runsHooks, STATUSES, FINISHED, MAX_INPUT_BYTES };
