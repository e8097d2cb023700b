// Hooks of the `runs` service, added after the package's own (authentication, ownership
// through `userId`, timestamps). A run document:
//   {model, input, inputBytes, params, status, progress, partial, result, error, worker,
//    heartbeatAt, leaseSeconds, revision, createdAt, updatedAt, userId (when authentication is on)}
// Clients create runs and may cancel them; the worker account updates everything else.
// Who may call which method on which run, and the shapes of what they send, are decided
// before these hooks (access.js, validation.js); these make the stored documents.
'use strict';

const crypto = require('crypto');
const { getChannelsWithReadAbility, makeOptions } = require('feathers-casl/dist/channels');
const policy = require('./policy');

const STATUSES = ['pending', 'running', 'succeeded', 'failed', 'canceled'];
const ACTIVE = ['pending', 'running'];
const FINISHED = STATUSES.filter((status) => !ACTIVE.includes(status));
const MAX_INPUT_BYTES = 4 * 1024 * 1024;

function runsHooks({ authEnabled, errors, payloadTooLarge }) {
  const { MethodNotAllowed } = errors;

  // The shapes are checked at the edge (validation.js); these hooks make the stored document.
  function newRun(context) {
    if (!context.params.provider) return context;
    const { model, input, params = {}, createdAt, updatedAt, userId } = context.data;
    const inputBytes = Buffer.byteLength(JSON.stringify(input));
    if (inputBytes > MAX_INPUT_BYTES) {
      throw payloadTooLarge(`run.input is ${inputBytes} bytes: larger than ${MAX_INPUT_BYTES} bytes`);
    }
    // A new run always starts pending and empty, whatever the client sent.
    context.data = {
      model,
      input,
      inputBytes,
      params,
      status: 'pending',
      progress: 0,
      partial: null,
      result: null,
      error: null,
      worker: null,
      heartbeatAt: null,
      leaseSeconds: null,
      createdAt,
      updatedAt,
    };
    if (userId !== undefined) context.data.userId = userId;
    return context;
  }

  function patchRules(context) {
    if (!context.params.provider) return context;
    if (context.data.status === 'canceled') {
      // Only a run that has not finished can be canceled (NotFound otherwise).
      context.params.query = { ...(context.params.query || {}), status: { $in: ACTIVE } };
    }
    // The package stamps the caller's id on every write (lib/utils/permission-hooks.js
    // setField); a run keeps its owner's, whoever patches it (worker, admin).
    if (authEnabled) delete context.data.userId;
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

  // Marks the worker's own writes, once, for the after hook and the publisher: `workerWrite`,
  // a patch over a connection whose grant writes `progress` (policy.js) that is not a cancel
  // (its claims included); `heldWrite`, one of those to a run it holds (worker/protocol.py
  // held_by: the condition {status: 'running', worker}): its progress, heartbeats and outcome.
  // Marked before exactConditionalPatch rewrites the condition.
  function markWorkerWrites(context) {
    const { connection, user, query = {} } = context.params;
    const role = authEnabled ? (user ? user.role : undefined) : null; // null: authentication off
    const workerWrite =
      Boolean(connection) && policy.writeOf(role, 'runs', 'patch') === 'progress' && context.data.status !== 'canceled';
    context.params.workerWrite = workerWrite;
    context.params.heldWrite = workerWrite && query.status === 'running' && typeof query.worker === 'string';
    return context;
  }

  // The worker does not read its held writes' answers back: they leave out the run's input
  // (a training run's examples, up to 4 MB, decoded ~20 times a second). Its claims are
  // answered whole. The `patched` event still carries the whole run (patchedPublisher).
  function answerHeldWriteWithoutInput(context) {
    const answer = context.dispatch || context.result;
    if (context.params.heldWrite && answer && typeof answer === 'object' && 'input' in answer) {
      const { input, ...rest } = answer; // eslint-disable-line no-unused-vars
      context.dispatch = rest;
    }
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
      create: [newRun],
      update: [refuseUpdate],
      patch: [markWorkerWrites, patchRules, exactConditionalPatch],
    },
    after: {
      patch: [answerHeldWriteWithoutInput],
    },
  };
}

/**
 * The `runs` `patched` publisher: the channels of the package's app publisher
 * (@marcellejs/backend 0.6.5 lib/channels.js: with authentication on, feathers-casl's
 * getChannelsWithReadAbility; off, anonymous and authenticated), less the connection that made
 * the patch when it is the worker's own (`workerWrite`, marked by the runs hooks'
 * markWorkerWrites). Each event is the whole run, its `input` included (up to 4 MB): echoed back
 * ~20 times a second during a run, the worker spent its time decoding its own progress. The
 * worker reads its claims from the patch's answer (and its held writes' answers leave out the
 * input: answerHeldWriteWithoutInput); every other connection (the page, other workers watching
 * for cancels and claims) still gets every event, whole.
 */
function patchedPublisher(app, { authEnabled }) {
  const caslOptions = makeOptions(app);
  const channelsOf = (data, context) =>
    authEnabled
      ? getChannelsWithReadAbility(app, data, context, caslOptions)
      : app.channel('anonymous', 'authenticated');
  return (data, context) => {
    const channels = channelsOf(data, context);
    const { connection, workerWrite } = context.params;
    if (!workerWrite || !channels) return channels;
    // A held write's answer (context.dispatch) leaves out the input, and an event goes to each
    // connection as channel.dataFor(connection) || context.dispatch || context.result
    // (@feathersjs/transport-commons 4.5 lib/socket/utils.js): the others are sent the whole run
    // (`data`), unless feathers-casl already chose their fields (a channel with data).
    // Test: test_run_events.py.
    const others = (channel) => {
      const rest = channel.filter((c) => c !== connection);
      return rest.data || !context.params.heldWrite ? rest : rest.send(data);
    };
    return Array.isArray(channels) ? channels.map(others) : others(channels);
  };
}

module.exports = { runsHooks, patchedPublisher, STATUSES, FINISHED, MAX_INPUT_BYTES };
